"""Grids that show explanations: input | saliency | transports | difference, one row per sample."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from kornia.color import ColorMap, apply_colormap
from torch import Tensor

__all__ = ["explanation_grid", "to_uint8_image"]

_PAD = 2
_LINE_HEIGHT = 12


def _as_rgb(images: Tensor) -> Tensor:
    """(..., C, H, W) -> (..., 3, H, W): gray repeated, RGB kept, other channel counts averaged."""
    if images.shape[-3] == 3:
        return images
    gray = images if images.shape[-3] == 1 else images.mean(dim=-3, keepdim=True)
    return gray.expand(*gray.shape[:-3], 3, *gray.shape[-2:])


def _signed_heatmap(values: Tensor, colormap: ColorMap) -> Tensor:
    """(N, C, H, W) signed values -> (N, 3, H, W) colors, 0 at the colormap's middle, per-row scale."""
    values = values.sum(dim=1, keepdim=True)
    scale = values.abs().flatten(1).amax(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
    return apply_colormap(((values / scale + 1) / 2).clamp(0, 1), colormap)


def explanation_grid(
    inputs: Tensor,
    saliency: Tensor,
    transports: Tensor,
    row_labels: Sequence[str] | None = None,
    column_labels: Sequence[str] | None = None,
    value_range: tuple[float, float] | None = None,
    panel_size: int = 64,
    colormap: str = "seismic",
) -> Tensor:
    """One row per sample: input | saliency | each transport | difference (last transport - input).

    Inputs and transports share one gray/RGB scale per row (``value_range``, or the row's min and max);
    saliency and difference are signed heatmaps (kornia colormap, 0 in the middle of ``colormap``,
    scaled by the row's largest absolute value). Labels are drawn with Pillow when it is installed.

    Args:
        inputs: (N, C, H, W) images.
        saliency: (N, C or 1, H, W) explanations (channels summed).
        transports: (N, T, C, H, W) transported images.
        row_labels: N captions drawn left of each row (lines split on ``"\\n"``).
        column_labels: 2 + T + 1 titles drawn above the columns.
        value_range: (low, high) of the data, e.g. (0, 1); None: per row.
        panel_size: panels are enlarged by an integer factor (nearest) to about this size.
        colormap: a kornia colormap name for the heatmaps.

    Returns:
        (3, H', W') float image in [0, 1].

    Example:
        >>> grid = explanation_grid(
        ...     torch.rand(2, 1, 8, 8), torch.randn(2, 1, 8, 8), torch.rand(2, 3, 1, 8, 8)
        ... )
        >>> grid.shape
        torch.Size([3, 136, 408])
    """
    if inputs.ndim != 4:
        raise ValueError(f"`inputs` must be (N, C, H, W), got {tuple(inputs.shape)}")
    count, _, height, width = inputs.shape
    if saliency.ndim != 4 or saliency.shape[0] != count or saliency.shape[2:] != inputs.shape[2:]:
        raise ValueError(f"`saliency` must be (N, C or 1, H, W) like inputs, got {tuple(saliency.shape)}")
    if transports.ndim != 5 or transports.shape[0] != count or transports.shape[2:] != inputs.shape[1:]:
        raise ValueError(f"`transports` must be (N, T, C, H, W), got {tuple(transports.shape)}")
    steps = transports.shape[1]
    if row_labels is not None and len(row_labels) != count:
        raise ValueError(f"`row_labels` needs {count} entries, got {len(row_labels)}")
    if column_labels is not None and len(column_labels) != steps + 3:
        raise ValueError(f"`column_labels` needs {steps + 3} entries, got {len(column_labels)}")

    inputs, saliency, transports = (t.detach().float().cpu() for t in (inputs, saliency, transports))
    images = torch.cat([inputs[:, None], transports], dim=1)  # (N, 1 + T, C, H, W)
    if value_range is None:
        low = images.flatten(1).amin(dim=1).view(-1, 1, 1, 1, 1)
        high = images.flatten(1).amax(dim=1).view(-1, 1, 1, 1, 1)
    else:
        low, high = (torch.tensor(float(v)) for v in value_range)
    images = _as_rgb(((images - low) / (high - low).clamp_min(1e-12)).clamp(0, 1))
    heatmaps = ColorMap(colormap, num_colors=256)
    panels = torch.cat(
        [
            images[:, :1],
            _signed_heatmap(saliency, heatmaps)[:, None],
            images[:, 1:],
            _signed_heatmap(transports[:, -1] - inputs, heatmaps)[:, None],
        ],
        dim=1,
    )  # (N, T + 3, 3, H, W)
    scale = max(1, round(panel_size / max(height, width)))
    panels = F.interpolate(panels.flatten(0, 1), scale_factor=scale, mode="nearest")
    panels = F.pad(panels, (_PAD, _PAD, _PAD, _PAD), value=1.0)
    grid = rearrange(panels, "(n k) c h w -> c (n h) (k w)", n=count)
    if row_labels is None and column_labels is None:
        return grid
    return _draw_labels(grid, row_labels, column_labels, panels.shape[-2], panels.shape[-1])


def _draw_labels(
    grid: Tensor,
    row_labels: Sequence[str] | None,
    column_labels: Sequence[str] | None,
    row_height: int,
    column_width: int,
) -> Tensor:
    try:
        from PIL import Image, ImageDraw, ImageFont
    except ImportError:  # labels are a nicety: the grid itself stays useful
        return grid
    font = ImageFont.load_default()
    left = 0
    if row_labels is not None:
        longest = max((len(line) for label in row_labels for line in label.split("\n")), default=0)
        left = 6 * longest + 8
    top = _LINE_HEIGHT + 4 if column_labels is not None else 0
    canvas = Image.new("RGB", (left + grid.shape[2], top + grid.shape[1]), "white")
    canvas.paste(Image.fromarray(to_uint8_image(grid)), (left, top))
    draw = ImageDraw.Draw(canvas)
    for index, label in enumerate(row_labels or ()):
        draw.multiline_text((4, top + index * row_height + 3), label, fill="black", font=font, spacing=2)
    for index, label in enumerate(column_labels or ()):
        draw.text((left + index * column_width + _PAD, 2), label, fill="black", font=font)
    array = torch.from_numpy(np.asarray(canvas).copy())
    return rearrange(array, "h w c -> c h w").float() / 255


def to_uint8_image(grid: Tensor) -> np.ndarray:
    """(3, H, W) float image in [0, 1] -> (H, W, 3) uint8 numpy array (for PNG, W&B, Pillow)."""
    return (rearrange(grid.clamp(0, 1), "c h w -> h w c") * 255).round().to(torch.uint8).numpy()
