"""``python -m lightning_ot.explain``: explain the predictions of a trained checkpoint.

    python -m lightning_ot.explain --ckpt_path CKPT --images DIR_OR_FILES ... --output-dir OUT
    python -m lightning_ot.explain --ckpt_path CKPT --recipe quickstart --limit 16 --output-dir OUT
    python -m lightning_ot.explain --ckpt_path CKPT --data my_data.yaml --output-dir OUT

For every input it writes, with :func:`lightning_ot.explain.explain`: the prediction, the margin, the
certified L2 radius (``OTClassifier.certified_radius``), the saliency map and the counterfactual
transports toward the runner-up class (or ``--target``) at ``--step-sizes`` times the first-order
distance to the boundary, with the boundary counterfactual found by Newton steps (or, with
``--boundary-search nearest``, the nearest boundary point found from there):

- ``OUT/panels/NNNNN_NAME.png``: one panel per input (input | saliency | transports | boundary
  counterfactual | counterfactual minus input, captioned);
- ``OUT/predictions.csv``: one row per input (columns in :data:`CSV_COLUMNS`);
- ``OUT/report.html``: a self-contained page (images embedded as data URIs, nothing to download)
  that shows them side by side.

No Lightning ``Trainer`` is involved: the checkpoint is loaded with
``OTClassifier.load_from_checkpoint`` (it holds the model's ``class_path``/``init_args``, as the fit
command saves it) onto ``--accelerator`` / ``--device``. Inputs are images (any format Pillow
reads, as :func:`lightning_ot.data.load_image` decodes them; a folder is searched recursively), MNIST
IDX files (with their labels when the matching ``labels-idx1`` file lies beside them), or the
validation set of a data module from a LightningCLI config (``--data FILE``) or a recipe
(``--recipe NAME``). Images are scaled to [0, 1] like the data modules do.
"""

from __future__ import annotations

import argparse
import base64
import csv
import html
import math
import sys
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
import yaml
from torch import Tensor

from lightning_ot._precision import ieee_float32
from lightning_ot.data import IMAGE_EXTENSIONS, load_image, read_idx
from lightning_ot.explain import (
    BoundarySearch,
    Explanation,
    caption_lines,
    encode_png,
    explain,
    explanation_mode,
    render_explanation,
)
from lightning_ot.module import OTClassifier

__all__ = [
    "CSV_COLUMNS",
    "Inputs",
    "explain_inputs",
    "load_data_inputs",
    "load_image_inputs",
    "main",
    "validation_tensors",
]

CSV_COLUMNS = (
    "file",
    "label",
    "prediction",
    "target",
    "margin",
    "certified_radius",
    "boundary_distance",
    "flipped",
    "on_boundary",
    "tightness",
    "gradient_norm",
    "pair_gradient_norm",
    "panel",
)
"""``predictions.csv``: ``file`` (input name), ``label`` (true class when known, else empty),
``prediction``, ``target`` (class transported to: the runner-up, or ``--target``), ``margin``
(``f_prediction - f_target``; binary ``|f|``), ``certified_radius``, ``boundary_distance`` (L2
distance to the boundary counterfactual found), ``flipped`` (the counterfactual's class differs from
the prediction: 1/0), ``on_boundary`` (1/0), ``tightness`` (``boundary_distance /
certified_radius``), ``gradient_norm`` (``||grad f_prediction||``), ``pair_gradient_norm``
(``||grad (f_prediction - f_target)||``), ``panel`` (PNG file, relative to the output folder)."""

_ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")


@dataclass
class Inputs:
    """The inputs to explain: ``names`` (N,), ``images`` (N, C, H, W) float in [0, 1] (or whatever the
    data module yields), ``labels`` (N,) or None."""

    names: list[str]
    images: Tensor
    labels: Tensor | None = None


# --------------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------------


def _is_idx(path: Path) -> bool:
    name = path.name.lower().removesuffix(".gz")
    return "-idx" in name or name.endswith((".idx", "-ubyte", ".ubyte"))


def _idx_labels(path: Path, count: int) -> Tensor | None:
    """The labels of an MNIST-style image IDX file, from its ``labels-idx1`` sibling if present."""
    if "images-idx3" not in path.name:
        return None
    sibling = path.with_name(path.name.replace("images-idx3", "labels-idx1"))
    if not sibling.is_file():
        return None
    labels = read_idx(sibling)
    return torch.from_numpy(labels.astype(np.int64)) if labels.shape == (count,) else None


def _image_channels(path: Path) -> int:
    from PIL import Image

    with Image.open(path) as image:
        if image.mode in ("1", "L", "LA", "I", "I;16", "F"):
            return 1
        if image.mode != "P":
            return 3
        rgb = np.asarray(image.convert("RGB"))
    return 1 if bool((rgb == rgb[:, :, :1]).all()) else 3


def load_image_inputs(
    paths: Sequence[str | Path],
    image_size: int | Sequence[int] | None = None,
    channels: int | None = None,
    limit: int | None = None,
) -> Inputs:
    """Images from files and folders (searched recursively for :data:`IMAGE_EXTENSIONS` and IDX
    files), scaled to [0, 1].

    Args:
        paths: image files, IDX files or folders.
        image_size: resize every image to this size (``load_image``'s center crop); None keeps the
            files' size, which must then be the same for all.
        channels: 1 or 3; None: 1 if the first image file is grayscale, else 3 (IDX images: 1).
        limit: keep the first ``limit`` inputs.

    Raises:
        FileNotFoundError: a path does not exist, or a folder holds no image.
        ValueError: the images have different sizes and no ``image_size`` was given, or an IDX file
            does not hold (N, H, W) images.
    """
    files: list[Path] = []
    for entry in map(Path, paths):
        if entry.is_dir():
            found = sorted(
                path
                for path in entry.rglob("*")
                if path.is_file() and (path.suffix.lower() in IMAGE_EXTENSIONS or _is_idx(path))
            )
            # An MNIST folder: its label files are not images.
            found = [path for path in found if not ("labels-idx1" in path.name and _is_idx(path))]
            if not found:
                raise FileNotFoundError(
                    f"--images: the folder {entry} holds no image ({', '.join(IMAGE_EXTENSIONS)}) nor IDX file"
                )
            files += found
        elif entry.is_file():
            files.append(entry)
        else:
            raise FileNotFoundError(f"--images: no such file or folder: {entry}")
    names: list[str] = []
    images: list[Tensor] = []
    labels: list[int] = []
    has_labels = True
    for path in files:
        if limit is not None and len(names) >= limit:
            break
        if _is_idx(path) and path.suffix.lower() not in IMAGE_EXTENSIONS:
            array = read_idx(path)
            if array.ndim != 3:
                raise ValueError(
                    f"--images: the IDX file {path} must hold (N, H, W) images, got {array.shape}"
                )
            count = array.shape[0] if limit is None else min(array.shape[0], limit - len(names))
            block = torch.from_numpy(array[:count].copy())[:, None]
            if block.dtype != torch.uint8:
                raise ValueError(f"--images: the IDX file {path} must hold uint8 images, got {block.dtype}")
            if image_size is not None:
                size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
                block = torch.nn.functional.interpolate(block.float(), size=size, mode="bilinear")
                block = block.round().clamp(0, 255).to(torch.uint8)
            if channels == 3:
                block = block.expand(-1, 3, -1, -1)
            file_labels = _idx_labels(path, array.shape[0])
            has_labels &= file_labels is not None
            if file_labels is not None:
                labels += file_labels[:count].tolist()
            names += [f"{path.name}[{index}]" for index in range(count)]
            images += list(block)
        else:
            if channels is None:
                channels = _image_channels(path)
            images.append(load_image(path, image_size, channels))
            names.append(str(path))
            has_labels = False
    if not images:
        raise FileNotFoundError("--images: no input found")
    shapes = {tuple(image.shape) for image in images}
    if len(shapes) > 1:
        raise ValueError(
            f"--images: the images have different shapes {sorted(shapes)}: pass --image-size (and --channels)"
        )
    stacked = torch.stack(images).float().div_(255.0)
    return Inputs(names, stacked, torch.tensor(labels) if has_labels and labels else None)


def _instantiate_data_module(section: Any, source: str) -> pl.LightningDataModule:
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(pl.LightningDataModule, "data", required=True)
    try:
        namespace = parser.parse_object({"data": section})
    except Exception as error:  # jsonargparse raises its own ArgumentError subclasses
        raise ValueError(f"{source}: not a valid data module config: {error}") from error
    instantiate = getattr(parser, "instantiate", None) or parser.instantiate_classes
    return instantiate(namespace).data


def validation_tensors(datamodule: pl.LightningDataModule, limit: int | None = None) -> tuple[Tensor, Tensor]:
    """The validation set of ``datamodule`` as (N, ...) inputs and (N,) labels, after the data
    module's own batch hooks (e.g. uint8 -> float scaling), the first ``limit`` samples at most."""
    datamodule.setup("validate")
    inputs, targets = [], []
    count = 0
    for batch in datamodule.val_dataloader():
        batch = datamodule.on_after_batch_transfer(datamodule.on_before_batch_transfer(batch, 0), 0)
        inputs.append(batch[0])
        targets.append(batch[1])
        count += batch[0].shape[0]
        if limit is not None and count >= limit:
            break
    if not inputs:
        raise ValueError(f"{type(datamodule).__name__} has an empty validation set")
    return torch.cat(inputs)[:limit], torch.cat(targets)[:limit]


def load_data_inputs(config: str | Path, limit: int | None = None) -> Inputs:
    """The validation set of the data module of a LightningCLI config file (its ``data:`` section)
    or of a file holding only the data module's ``class_path`` / ``init_args``."""
    path = Path(config)
    if not path.is_file():
        raise FileNotFoundError(f"--data: no such file: {path}")
    content = yaml.safe_load(path.read_text())
    if not isinstance(content, dict):
        raise ValueError(f"--data: {path} must be a YAML mapping with a `data:` section or a `class_path`")
    section = content.get("data", content if "class_path" in content else None)
    if section is None:
        raise ValueError(f"--data: {path} has neither a `data:` section nor a `class_path`")
    images, labels = validation_tensors(_instantiate_data_module(section, str(path)), limit)
    return Inputs([f"val/{index:05d}" for index in range(len(images))], images, labels.reshape(-1).long())


# --------------------------------------------------------------------------------------------------
# Explaining and writing
# --------------------------------------------------------------------------------------------------


def _device(accelerator: str, device: str | None) -> torch.device:
    if device is not None:
        return torch.device(device)
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ValueError(f"--accelerator {accelerator}: no CUDA device is available")
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if accelerator == "mps" or (accelerator == "auto" and mps is not None and mps.is_available()):
        if mps is None or not mps.is_available():
            raise ValueError("--accelerator mps: no MPS device is available")
        return torch.device("mps")
    return torch.device("cpu")


def _targets(model: OTClassifier, inputs: Tensor, requested: int | None) -> tuple[Tensor | None, int]:
    """Per-sample targets for ``--target``: the runner-up where the prediction already is the target."""
    if requested is None:
        return None, 0
    with torch.no_grad():
        logits = model(inputs)
    classes = 2 if logits.shape[1] == 1 else logits.shape[1]
    if not 0 <= requested < classes:
        raise ValueError(f"--target must be a class index in [0, {classes}), got {requested}")
    if logits.shape[1] == 1:
        prediction = (logits[:, 0] > 0).long()
        runner_up = 1 - prediction
    else:
        prediction = logits.argmax(dim=1)
        runner_up = logits.scatter(1, prediction[:, None], float("-inf")).argmax(dim=1)
    same = prediction == requested
    return torch.where(same, runner_up, torch.full_like(prediction, requested)), int(same.sum())


def _png(array: np.ndarray, path: Path | None = None) -> bytes:
    data = encode_png(array)
    if path is not None:
        path.write_bytes(data)
    return data


def _safe_stem(name: str) -> str:
    path = Path(name)
    stem = path.stem if path.suffix.lower() in IMAGE_EXTENSIONS else name.replace("[", "_").replace("]", "")
    stem = stem or "input"
    return "".join(character if character.isalnum() or character in "-_." else "_" for character in stem)[:60]


def _rows(
    explanation: Explanation, names: Sequence[str], labels: Tensor | None, panels: Sequence[str]
) -> list[dict[str, Any]]:
    def number(tensor: Tensor, index: int) -> str:
        value = float(tensor[index])
        return f"{value:.9g}" if math.isfinite(value) else "nan"

    rows = []
    for index, name in enumerate(names):
        rows.append(
            {
                "file": name,
                "label": "" if labels is None else int(labels[index]),
                "prediction": int(explanation.prediction[index]),
                "target": int(explanation.target[index]),
                "margin": number(explanation.margin, index),
                "certified_radius": number(explanation.certified_radius, index),
                "boundary_distance": number(explanation.boundary_distance, index),
                "flipped": int(explanation.flipped[index]),
                "on_boundary": int(explanation.on_boundary[index]),
                "tightness": number(explanation.tightness, index),
                "gradient_norm": number(explanation.gradient_norm, index),
                "pair_gradient_norm": number(explanation.pair_gradient_norm, index),
                "panel": panels[index],
            }
        )
    return rows


_STYLE = """
body { font-family: sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; }
th, td { border-bottom: 1px solid #ddd; padding: 4px 8px; text-align: right; vertical-align: middle; }
th { background: #f3f3f3; position: sticky; top: 0; }
td.file { text-align: left; font-family: monospace; max-width: 22em; overflow-wrap: anywhere; }
td.flipped-0 { color: #a33; }
img { image-rendering: pixelated; }
.summary td { text-align: left; border: none; }
"""


def _report_html(
    rows: Sequence[dict[str, Any]], images: Sequence[bytes], summary: dict[str, str], title: str
) -> str:
    summary_rows = "".join(
        f"<tr><td>{html.escape(key)}</td><td>{html.escape(value)}</td></tr>" for key, value in summary.items()
    )
    headers = ("#", "file", "label", "prediction", "target", "margin", "certified radius",
               "boundary distance", "tightness", "flipped", "‖∇f_k‖", "explanation")  # fmt: skip
    body = []
    for index, (row, image) in enumerate(zip(rows, images, strict=True)):
        source = "data:image/png;base64," + base64.b64encode(image).decode("ascii")
        cells = [
            f"<td>{index}</td>",
            f'<td class="file">{html.escape(str(row["file"]))}</td>',
            f"<td>{row['label']}</td>",
            f"<td>{row['prediction']}</td>",
            f"<td>{row['target']}</td>",
            *(f"<td>{_short(row[key])}</td>" for key in ("margin", "certified_radius", "boundary_distance")),
            f"<td>{_short(row['tightness'])}</td>",
            f'<td class="flipped-{row["flipped"]}">{"yes" if row["flipped"] else "no"}</td>',
            f"<td>{_short(row['gradient_norm'])}</td>",
            f'<td><img alt="explanation of input {index}" src="{source}"></td>',
        ]
        body.append(f'<tr class="input">{"".join(cells)}</tr>')
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n"
        f'<h1>{html.escape(title)}</h1>\n<table class="summary">{summary_rows}</table>\n'
        "<p>Each panel: input | saliency (gradient of the predicted class, red positive, blue negative) | "
        "transports toward the target class at multiples of the first-order boundary distance t_b | "
        "boundary counterfactual | counterfactual minus input. The certified radius is a lower bound on "
        "the L2 distance to any input classified differently; tightness is the boundary distance found "
        "over it (1 is tight).</p>\n"
        "<table>\n<thead><tr>"
        + "".join(f"<th>{html.escape(name)}</th>" for name in headers)
        + "</tr></thead>\n"
        "<tbody>\n" + "\n".join(body) + "\n</tbody>\n</table>\n</body>\n</html>\n"
    )


def _short(value: str) -> str:
    number = float(value)
    return f"{number:.3f}" if math.isfinite(number) else "n/a"


def explain_inputs(
    model: OTClassifier,
    inputs: Inputs,
    output_dir: Path,
    *,
    target: int | None = None,
    step_sizes: Sequence[float] = (0.5, 1.0, 2.0),
    clamp: tuple[float, float] | None = None,
    max_iterations: int = 10,
    boundary_search: BoundarySearch = "newton",
    batch_size: int = 64,
    panel_size: int = 64,
    progress: bool | None = None,
    title: str = "lightning-ot explanations",
) -> list[dict[str, Any]]:
    """Explain ``inputs`` with ``model`` (eval mode, on its device) and write the panels,
    ``predictions.csv`` and ``report.html`` to ``output_dir``; returns the CSV rows."""
    from tqdm.auto import tqdm

    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "panels").mkdir(exist_ok=True)
    device = model.device
    images = inputs.images
    value_range = clamp
    if value_range is None and bool(images.min() >= 0) and bool(images.max() <= 1):
        value_range = (0.0, 1.0)
    rows: list[dict[str, Any]] = []
    pngs: list[bytes] = []
    replaced = 0
    statistics: dict[str, list[Tensor]] = {"gradient_norm": [], "tightness": [], "correct": []}
    disable = not sys.stderr.isatty() if progress is None else not progress
    bar = tqdm(total=len(images), unit="input", desc="explaining", disable=disable)
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size].to(device)
        precision = ieee_float32() if getattr(model, "certify_in_float32", True) else nullcontext()
        with explanation_mode(model, batch), precision:
            targets, count = _targets(model, batch, target)
            replaced += count
            explanation = explain(
                model,
                batch,
                model.certified_radius,
                target=targets,
                step_sizes=step_sizes,
                clamp=clamp,
                max_iterations=max_iterations,
                boundary_search=boundary_search,
            )
        explanation = explanation.to("cpu")
        names = inputs.names[start : start + batch_size]
        labels = None if inputs.labels is None else inputs.labels[start : start + batch_size]
        captions = caption_lines(explanation, labels)
        panels = []
        for offset, name in enumerate(names):
            relative = f"panels/{start + offset:05d}_{_safe_stem(name)}.png"
            grid = render_explanation(
                explanation[offset], [captions[offset]], value_range=value_range, panel_size=panel_size
            )
            pngs.append(_png(grid, output_dir / relative))
            panels.append(relative)
        rows += _rows(explanation, names, labels, panels)
        statistics["gradient_norm"].append(explanation.gradient_norm)
        statistics["tightness"].append(explanation.tightness)
        if labels is not None:
            statistics["correct"].append(explanation.prediction == labels)
        bar.update(len(names))
    bar.close()

    with open(output_dir / "predictions.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    gradient_norm = torch.cat(statistics["gradient_norm"]).double()
    tightness = torch.cat(statistics["tightness"]).double()
    summary = {
        "inputs": str(len(rows)),
        "median ‖∇f_k‖ (10th percentile)": f"{gradient_norm.quantile(0.5):.3f} ({gradient_norm.quantile(0.1):.3f})",
        "median tightness (boundary distance / certified radius)": (
            f"{tightness.nanquantile(0.5):.3f}" if bool(tightness.isfinite().any()) else "n/a"
        ),
        "boundary counterfactuals that flipped the class": f"{sum(row['flipped'] for row in rows)} / {len(rows)}",
    }
    if statistics["correct"]:
        summary["accuracy"] = f"{100 * float(torch.cat(statistics['correct']).double().mean()):.2f} %"
    if target is not None:
        summary["target"] = f"class {target} (runner-up for the {replaced} inputs predicted as it)"
    (output_dir / "report.html").write_text(_report_html(rows, pngs, summary, title))
    return rows


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m lightning_ot.explain",
        description="Explain the predictions of an OTClassifier checkpoint: saliency, certified radius, "
        "counterfactual transports; PNG panels, predictions.csv and a self-contained report.html.",
    )
    parser.add_argument("--ckpt_path", "--ckpt-path", dest="ckpt_path", type=Path, required=True,
                        help="checkpoint written by the fit command (OTClassifier)")  # fmt: skip
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", nargs="+", metavar="PATH", help="image files, IDX files or folders")
    source.add_argument(
        "--data", type=Path, help="LightningCLI config (or data-module config): its validation set"
    )
    source.add_argument("--recipe", help="recipe name: its data module's validation set")
    parser.add_argument(
        "--output-dir", "--output_dir", dest="output_dir", type=Path, default=Path("explanations")
    )
    parser.add_argument("--limit", type=int, default=None, help="explain the first N inputs only")
    parser.add_argument("--target", type=int, default=None,
                        help="class to transport toward (default: each input's runner-up)")  # fmt: skip
    parser.add_argument("--step-sizes", type=float, nargs="+", default=[0.5, 1.0, 2.0],
                        help="transports shown, as multiples of the first-order boundary distance")  # fmt: skip
    parser.add_argument("--clamp", type=float, nargs=2, default=None, metavar=("LOW", "HIGH"),
                        help="data range to clamp transports to, e.g. 0 1")  # fmt: skip
    parser.add_argument("--max-iterations", type=int, default=10, help="Newton steps to the boundary at most")
    parser.add_argument("--boundary-search", choices=("newton", "nearest"), default="newton",
                        help="boundary counterfactual: where Newton steps along the gradient land, or the "
                        "nearest boundary point found from there (10-20x slower)")  # fmt: skip
    parser.add_argument("--image-size", type=int, nargs="+", default=None, metavar="SIZE",
                        help="resize --images to SIZE or HEIGHT WIDTH")  # fmt: skip
    parser.add_argument("--channels", type=int, choices=(1, 3), default=None,
                        help="decode --images as 1 (gray) or 3 (RGB) channels (default: from the first file)")  # fmt: skip
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--panel-size", type=int, default=64, help="approximate panel size in pixels")
    parser.add_argument("--accelerator", choices=_ACCELERATORS, default="auto")
    parser.add_argument("--device", default=None, help="torch device, e.g. cuda:1 (overrides --accelerator)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(args: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Run the command line with ``args`` (default ``sys.argv[1:]``); returns the CSV rows."""
    parser = _parser()
    options = parser.parse_args(args)
    try:
        if options.limit is not None and options.limit < 1:
            raise ValueError(f"--limit must be >= 1, got {options.limit}")
        if options.batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {options.batch_size}")
        if options.image_size is not None and len(options.image_size) not in (1, 2):
            raise ValueError(f"--image-size takes SIZE or HEIGHT WIDTH, got {options.image_size}")
        if not options.ckpt_path.is_file():
            raise FileNotFoundError(f"--ckpt_path: no such checkpoint: {options.ckpt_path}")
        device = _device(options.accelerator, options.device)
        model = OTClassifier.load_from_checkpoint(options.ckpt_path, map_location=device).eval()
        if options.images is not None:
            size = options.image_size
            inputs = load_image_inputs(
                options.images,
                None if size is None else (size[0] if len(size) == 1 else tuple(size)),
                options.channels,
                options.limit,
            )
        else:
            if options.recipe is not None:
                from lightning_ot.recipes import recipe_path

                config = recipe_path(options.recipe)
            else:
                config = options.data
            inputs = load_data_inputs(config, options.limit)
        try:
            with torch.no_grad():
                model(inputs.images[:1].to(device))
        except RuntimeError as error:
            raise ValueError(
                f"the model cannot take inputs of shape {tuple(inputs.images.shape[1:])} ({error}); "
                "for --images pass the training size and channels with --image-size and --channels"
            ) from error
        rows = explain_inputs(
            model,
            inputs,
            options.output_dir,
            target=options.target,
            step_sizes=options.step_sizes,
            clamp=None if options.clamp is None else tuple(options.clamp),
            max_iterations=options.max_iterations,
            boundary_search=options.boundary_search,
            batch_size=options.batch_size,
            panel_size=options.panel_size,
            progress=False if options.no_progress else None,
            title=f"lightning-ot explanations of {options.ckpt_path.name}",
        )
    except (ValueError, OSError, LookupError) as error:
        parser.exit(2, f"error: {error}\n")
    print(
        f"explained {len(rows)} inputs on {device}: wrote {options.output_dir / 'predictions.csv'}, "
        f"{options.output_dir / 'report.html'} and {len(rows)} panels in {options.output_dir / 'panels'}"
    )
    return rows


if __name__ == "__main__":
    main()
