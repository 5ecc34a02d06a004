"""Grids of panels that show explanations, rendered straight to ``uint8`` RGB arrays (for PNG files,
W&B, TensorBoard and HTML reports): one row per sample, one column per view of it."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence
from functools import cache
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from einops import rearrange, repeat
from kornia.color import ColorMap, apply_colormap
from torch import Tensor

if TYPE_CHECKING:
    from lightning_ot.explain.explanation import Explanation

__all__ = [
    "caption_lines",
    "encode_png",
    "heatmap_panels",
    "image_panels",
    "render_explanation",
    "render_grid",
]

_PAD = 2
_LINE_HEIGHT = 12
_CHARACTER_WIDTH = 6


@cache
def _font() -> Any:
    from PIL import ImageFont

    # The bitmap font draws ~10x faster than the FreeType default, which matters once per epoch.
    loader = getattr(ImageFont, "load_default_imagefont", ImageFont.load_default)
    return loader()


@cache
def _colormap(name: str) -> ColorMap:
    return ColorMap(name, num_colors=256)


_PNG_COLOR_TYPES = {1: 0, 3: 2, 4: 6}  # channels -> PNG colour type: grayscale, RGB, RGBA


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def encode_png(image: np.ndarray, compress_level: int = 1) -> bytes:
    """Encode a ``uint8`` image as a PNG file (bytes), lossless, every row unfiltered.

    The grids of this module are mostly flat colours and panels enlarged by repeating pixels, which
    deflate compresses well without PNG's per-row prediction filters. Pillow chooses a filter for
    every row by trying four of them, which takes most of its encoding time: on the per-epoch grids of
    the quickstart and ``mnist5k`` recipes this encoder is about 3x faster than Pillow at the same
    zlib level, its files are 12 % larger (the quickstart's) and 22 % smaller (``mnist5k``'s) than
    Pillow's, and reading them back is about 2x faster (``benchmarks/fixed_costs.py``; PNG format:
    RFC 2083, filter type 0 for every row).

    Args:
        image: (H, W) grayscale, (H, W, 3) RGB or (H, W, 4) RGBA, ``uint8``.
        compress_level: zlib level, 0 (stored) to 9 (smallest, slowest).

    Returns:
        The PNG file's bytes (read back with Pillow, ``imageio``, a browser...).

    Example:
        >>> import io
        >>> from PIL import Image
        >>> image = np.arange(24, dtype=np.uint8).reshape(2, 4, 3)
        >>> bool((np.asarray(Image.open(io.BytesIO(encode_png(image)))) == image).all())
        True
    """
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        raise TypeError(f"`image` must be a uint8 numpy array, got {getattr(image, 'dtype', type(image))}")
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in _PNG_COLOR_TYPES or 0 in image.shape:
        raise ValueError(f"`image` must be (H, W), (H, W, 3) or (H, W, 4) and non-empty, got {image.shape}")
    if not 0 <= compress_level <= 9:
        raise ValueError(f"`compress_level` must be in [0, 9], got {compress_level}")
    height, width, channels = image.shape
    rows = np.zeros((height, 1 + width * channels), dtype=np.uint8)  # first byte of a row: filter 0
    rows[:, 1:] = image.reshape(height, width * channels)
    header = struct.pack(">IIBBBBB", width, height, 8, _PNG_COLOR_TYPES[channels], 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(rows.data, compress_level))
        + _png_chunk(b"IEND", b"")
    )


def _to_uint8(values: Tensor) -> Tensor:
    return (values.clamp(0, 1) * 255).round().to(torch.uint8)


def image_panels(images: Tensor, value_range: tuple[float, float] | None = None) -> Tensor:
    """Images as uint8 RGB panels, one gray/RGB scale per sample.

    Args:
        images: (N, C, H, W) or (N, K, C, H, W) (K images of each sample, e.g. an input and its
            transports, shown on the same scale). One channel is repeated, three are RGB, any other
            count is averaged.
        value_range: (low, high) of the data, e.g. (0, 1); None: each sample's own min and max.

    Returns:
        uint8 (N, 3, H, W) or (N, K, 3, H, W).

    Example:
        >>> image_panels(torch.tensor([[[[0.0, 0.5, 1.0]]]])).tolist()
        [[[[0, 128, 255]], [[0, 128, 255]], [[0, 128, 255]]]]
    """
    if images.ndim not in (4, 5):
        raise ValueError(f"`images` must be (N, C, H, W) or (N, K, C, H, W), got {tuple(images.shape)}")
    images = images.detach().float().cpu()
    shape = (-1,) + (1,) * (images.ndim - 1)
    if value_range is None:
        low = images.flatten(1).amin(dim=1).view(shape)
        high = images.flatten(1).amax(dim=1).view(shape)
    else:
        low, high = (torch.tensor(float(value)) for value in value_range)
    scaled = (images - low) / (high - low).clamp_min(1e-12)
    channels = scaled.shape[-3]
    if channels != 3:
        gray = scaled if channels == 1 else scaled.mean(dim=-3, keepdim=True)
        scaled = gray.expand(*gray.shape[:-3], 3, *gray.shape[-2:])
    return _to_uint8(scaled)


def heatmap_panels(values: Tensor, colormap: str = "seismic") -> Tensor:
    """Signed maps (saliency, differences) as uint8 RGB heatmaps.

    Channels are summed; 0 maps to the middle of ``colormap`` (a diverging kornia colormap), and each
    sample is scaled by its own largest absolute value.

    Args:
        values: (N, C, H, W) signed values.
        colormap: a kornia colormap name.

    Returns:
        uint8 (N, 3, H, W).

    Example:
        >>> heatmap_panels(torch.tensor([[[[-1.0, 0.0, 1.0]]]])).shape
        torch.Size([1, 3, 1, 3])
    """
    if values.ndim != 4:
        raise ValueError(f"`values` must be (N, C, H, W), got {tuple(values.shape)}")
    values = values.detach().float().cpu().sum(dim=1, keepdim=True)
    scale = values.abs().flatten(1).amax(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
    return _to_uint8(apply_colormap(((values / scale + 1) / 2).clamp(0, 1), _colormap(colormap)))


def render_grid(
    columns: Sequence[Tensor],
    row_labels: Sequence[str] | None = None,
    column_labels: Sequence[str] | None = None,
    panel_size: int = 64,
) -> np.ndarray:
    """Lay panels out in a grid: one row per sample, captions on the left, titles on top.

    Args:
        columns: uint8 panels from :func:`image_panels` / :func:`heatmap_panels`, each (N, 3, H, W)
            (one column) or (N, K, 3, H, W) (K columns); all with the same N, H and W.
        row_labels: N captions drawn left of the rows (lines split on ``"\\n"``).
        column_labels: one title per column, drawn above it.
        panel_size: panels are enlarged by an integer factor (nearest) to about this size.

    Returns:
        (H', W', 3) uint8 array.

    Example:
        >>> inputs = image_panels(torch.rand(2, 1, 8, 8))
        >>> render_grid([inputs, heatmap_panels(torch.randn(2, 1, 8, 8))]).shape
        (136, 136, 3)
    """
    if not columns:
        raise ValueError("`columns` must hold at least one panel tensor")
    blocks = [column if column.ndim == 5 else column[:, None] for column in columns]
    first = blocks[0]
    for block in blocks:
        if block.ndim != 5 or block.dtype != torch.uint8 or block.shape[2] != 3:
            raise ValueError(
                f"panels must be uint8 (N, [K,] 3, H, W), got {block.dtype} {tuple(block.shape)}"
            )
        if block.shape[0] != first.shape[0] or block.shape[3:] != first.shape[3:]:
            raise ValueError(
                f"every column must have the same (N, H, W), got {tuple(first.shape)} and {tuple(block.shape)}"
            )
    panels = torch.cat(blocks, dim=1)  # (N, K, 3, H, W)
    count, width_in_panels, _, height, width = panels.shape
    if row_labels is not None and len(row_labels) != count:
        raise ValueError(f"`row_labels` needs {count} entries, got {len(row_labels)}")
    if column_labels is not None and len(column_labels) != width_in_panels:
        raise ValueError(f"`column_labels` needs {width_in_panels} entries, got {len(column_labels)}")
    scale = max(1, round(panel_size / max(height, width)))
    panels = repeat(panels, "n k c h w -> n k (h a) (w b) c", a=scale, b=scale)
    panels = torch.nn.functional.pad(panels, (0, 0, _PAD, _PAD, _PAD, _PAD), value=255)
    grid = rearrange(panels, "n k h w c -> (n h) (k w) c").numpy()
    cell_height, cell_width = panels.shape[2], panels.shape[3]
    if row_labels is None and column_labels is None:
        return grid
    left = 0
    if row_labels is not None:
        longest = max((len(line) for label in row_labels for line in label.split("\n")), default=0)
        left = _CHARACTER_WIDTH * longest + 8
    top = _LINE_HEIGHT + 4 if column_labels is not None else 0
    canvas = np.full((top + grid.shape[0], left + grid.shape[1], 3), 255, dtype=np.uint8)
    canvas[top:, left:] = grid
    if row_labels is not None:
        canvas[top:, :left] = _text_strip(
            (left, grid.shape[0]),
            [((4, index * cell_height + 3), label) for index, label in enumerate(row_labels)],
        )
    if column_labels is not None:
        canvas[:top, left:] = _text_strip(
            (grid.shape[1], top),
            [((index * cell_width + _PAD, 2), label) for index, label in enumerate(column_labels)],
        )
    return canvas


def _text_strip(size: tuple[int, int], texts: Sequence[tuple[tuple[int, int], str]]) -> np.ndarray:
    """(height, width, 1) uint8 strip of black text on white (broadcasts into an RGB canvas)."""
    from PIL import Image, ImageDraw

    strip = Image.new("L", size, 255)
    draw = ImageDraw.Draw(strip)
    for position, text in texts:
        draw.multiline_text(position, text, fill=0, font=_font(), spacing=1)
    return np.asarray(strip)[:, :, None]


def caption_lines(
    explanation: Explanation,
    labels: Tensor | Sequence[int] | None = None,
    class_names: Sequence[str] | None = None,
) -> list[str]:
    """One caption per sample: true class (if ``labels``), prediction -> counterfactual class, margin,
    certified radius and the distance to the boundary counterfactual.

    Example:
        >>> from lightning_ot.explain import explain
        >>> model = torch.nn.Linear(2, 3, bias=False)
        >>> _ = torch.nn.init.eye_(model.weight)
        >>> print(caption_lines(explain(model, torch.tensor([[1.0, 0.5]])), labels=[0])[0])
        true 0 pred 0 -> 1
        margin 0.500
        radius 0.354
        boundary 0.354
    """

    def name(index: int) -> str:
        return class_names[index] if class_names is not None else str(index)

    lines = []
    for index in range(len(explanation)):
        head = f"pred {name(int(explanation.prediction[index]))} -> {name(int(explanation.target[index]))}"
        if labels is not None:
            head = f"true {name(int(labels[index]))} {head}"
        distance = f"{float(explanation.boundary_distance[index]):.3f}"
        if not bool(explanation.reached_boundary[index]):
            distance += " (not reached)"
        lines.append(
            f"{head}\nmargin {float(explanation.margin[index]):.3f}\n"
            f"radius {float(explanation.certified_radius[index]):.3f}\nboundary {distance}"
        )
    return lines


def render_explanation(
    explanation: Explanation,
    row_labels: Sequence[str] | None = None,
    value_range: tuple[float, float] | None = None,
    panel_size: int = 64,
    colormap: str = "seismic",
) -> np.ndarray:
    """The grid of an :class:`~lightning_ot.explain.Explanation` of images: one row per sample with
    input | saliency | each step transport | boundary counterfactual | boundary counterfactual - input.

    Inputs, transports and the counterfactual share one gray/RGB scale per row (``value_range``, or
    the row's min and max); saliency and difference are signed heatmaps (0 in the middle of
    ``colormap``). Captions default to :func:`caption_lines`.

    Args:
        explanation: of (N, C, H, W) inputs.
        row_labels: N captions; None: :func:`caption_lines` without true labels.
        value_range: (low, high) of the data, e.g. (0, 1).
        panel_size: approximate size in pixels of each panel.
        colormap: kornia colormap of the heatmaps.

    Returns:
        (H', W', 3) uint8 array.

    Example:
        >>> from lightning_ot.explain import explain
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))
        >>> render_explanation(explain(model, torch.rand(2, 1, 8, 8))).shape
        (152, 568, 3)
    """
    inputs = explanation.inputs
    if inputs.ndim != 4:
        raise ValueError(f"rendering needs (N, C, H, W) image inputs, got {tuple(inputs.shape)}")
    images = torch.cat([inputs[:, None], explanation.transports, explanation.counterfactual[:, None]], dim=1)
    images = image_panels(images, value_range)
    columns = [
        images[:, 0],
        heatmap_panels(explanation.saliency, colormap),
        images[:, 1:],
        heatmap_panels(explanation.counterfactual - inputs, colormap),
    ]
    titles = ["input", "saliency", *(f"{step:g} t_b" for step in explanation.step_sizes), "boundary", "diff"]
    labels = caption_lines(explanation) if row_labels is None else row_labels
    return render_grid(columns, labels, titles, panel_size)
