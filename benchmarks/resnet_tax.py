"""The Lipschitz tax of the ImageNet-scale LipschitzResNet at the per-device batches people train with.

    python benchmarks/resnet_tax.py --threads 1 --json tax.json --plot docs/figures/resnet_tax.png
    python benchmarks/resnet_tax.py --widths 1.0 --batch-sizes 2 8 32 --rounds 6 --threads 1
    python benchmarks/resnet_tax.py --plot-from a.json b.json --plot docs/figures/resnet_tax.png

For each width, the training step (forward, cross-entropy, backward, Adam) of ``LipschitzResNet``
and of its plain twin (``unconstrained_twin``: ``nn.Conv2d`` / ``nn.Linear``, ReLU, average pooling)
is timed at 224x224 for each batch size, and so is the recomputation of the constrained weights
alone (every orthogonal layer's ``compute_weight()``, forward and backward: the per-step constant,
which does not depend on the batch). Everything is interleaved: a round times the weights once,
then each batch size's plain and 1-Lipschitz steps back to back (their order alternating from round
to round), so that the load of a shared machine hits both sides of each ratio alike. Printed per
batch size, in wall-clock time and in CPU time of this process (with ``--threads 1`` the step's own
work, which other processes slow down far less than the wall clock): the median step times, the
median of the per-round ratios (1-Lipschitz / plain) with its quartiles, and the weight
recomputation's share of the plain step (also paired by round). The plot shows the CPU-time figures
(``--plot-clock wall`` for the others).
Then the evaluation path: the first forward after the weights changed (recomputation without a
graph and certification of every weight, :func:`~lightning_ot.nn.bounds.certify_weight`: what each
validation epoch pays once) against a forward with the cached weights.

``--pretrain-steps N`` first trains the 1-Lipschitz network N Adam steps at lr 1e-3 on small random
images (``--pretrain-image-size``), so that the raw weights drift from their orthogonal
initialization as in training and Björck's iteration needs more steps: the constant grows.
``--retraction-steps 1`` retracts the raw weights after each of those steps and of the timed ones
(``lightning_ot.nn.retract_weights_``, as ``OTClassifier(retraction_steps=1)`` does; its cost is
in the timed step), which keeps them near orthonormal.
``--variant norm-preserving`` times ``LipschitzResNet(norm_preserving=True)``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lipschitz_tax import paired_ratio

from lightning_ot.models import LipschitzResNet, unconstrained_twin
from lightning_ot.nn import retract_weights_

CLOCKS = ("wall", "cpu")


def _timed(function: Callable[[], None]) -> dict[str, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    function()
    return {"wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu}


def constrained_layers(model: nn.Module) -> list[nn.Module]:
    """The layers whose weight is computed from raw parameters (``compute_weight()``)."""
    return [module for module in model.modules() if callable(getattr(module, "compute_weight", None))]


def weight_recomputation(model: nn.Module) -> Callable[[], None]:
    """Forward and backward of every constrained weight alone, as a training step computes them."""
    layers = constrained_layers(model)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        cotangents = [torch.randn(layer.compute_weight().shape, generator=generator) for layer in layers]

    def step() -> None:
        weights = [layer.compute_weight() for layer in layers]
        torch.autograd.backward(weights, cotangents)
        model.zero_grad(set_to_none=True)

    return step


def training_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    labels: torch.Tensor,
    retraction_steps: int = 0,
) -> Callable[[], None]:
    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(images), labels).backward()
        optimizer.step()
        if retraction_steps:
            retract_weights_(model, retraction_steps)

    return step


def pretrain(
    model: nn.Module, num_outputs: int, image_size: int, steps: int, retraction_steps: int = 0
) -> float:
    """Adam steps at lr 1e-3 on random images, so that the raw weights drift; returns seconds spent."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(1)
    start = time.perf_counter()
    model.train()
    for _ in range(steps):
        images = torch.rand(8, 3, image_size, image_size, generator=generator)
        labels = torch.randint(0, num_outputs, (8,), generator=generator)
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(images), labels).backward()
        optimizer.step()
        if retraction_steps:
            retract_weights_(model, retraction_steps)
    return time.perf_counter() - start


def evaluation_path(model: nn.Module, image_size: int) -> dict[str, float]:
    """Seconds of the first eval forward after a weight change, of a cached one, and of the recomputation."""
    layers = constrained_layers(model)
    images = torch.rand(2, 3, image_size, image_size)
    with torch.no_grad():
        start = time.perf_counter()
        for layer in layers:
            layer.compute_weight()
        recompute = time.perf_counter() - start
    model.eval()
    try:
        with torch.no_grad():
            start = time.perf_counter()
            model(images)
            first = time.perf_counter() - start
            start = time.perf_counter()
            model(images)
            cached = time.perf_counter() - start
    finally:
        model.train()
    return {
        "first_eval_forward_s": first,
        "cached_eval_forward_s": cached,
        "recompute_no_grad_s": recompute,
        "certification_s": max(first - cached - recompute, 0.0),
    }


def measure_width(
    width: float,
    batch_sizes: list[int],
    rounds: int,
    warmup: int,
    image_size: int,
    num_outputs: int,
    stage_blocks: tuple[int, ...],
    variant: str,
    pretrain_steps: int,
    pretrain_image_size: int,
    retraction_steps: int = 0,
) -> dict:
    torch.manual_seed(0)
    model = LipschitzResNet(
        3,
        num_outputs,
        width_multiplier=width,
        stage_blocks=stage_blocks,
        norm_preserving=variant == "norm-preserving",
    )
    twin = unconstrained_twin(model)
    label = f"width {width:g}" + (" norm-preserving" if variant == "norm-preserving" else "")
    label += f", after {pretrain_steps} steps" if pretrain_steps else ""
    label += ", retracted" if retraction_steps else ""
    plain_parameters = sum(p.numel() for p in twin.parameters())
    print(
        f"\n== {label}: {plain_parameters / 1e6:.1f}M weights as a plain network, {image_size}x{image_size}"
    )
    result: dict = {
        "label": label,
        "width": width,
        "variant": variant,
        "image_size": image_size,
        "plain_parameters": plain_parameters,
    }
    if pretrain_steps:
        seconds = pretrain(model, num_outputs, pretrain_image_size, pretrain_steps, retraction_steps)
        print(
            f"  pretrained {pretrain_steps} Adam steps at lr 1e-3 ({pretrain_image_size}px, batch 8, {seconds:.0f} s)"
        )
        result["pretrain_steps"] = pretrain_steps
    model.train()
    twin.train()
    # lr 1e-5: the timed steps barely move the weights, so Björck's work stays that of this state
    optimizers = {
        name: torch.optim.Adam(net.parameters(), lr=1e-5)
        for name, net in (("plain", twin), ("lipschitz", model))
    }
    generator = torch.Generator().manual_seed(0)
    batches = {
        size: (
            torch.rand(size, 3, image_size, image_size, generator=generator),
            torch.randint(0, num_outputs, (size,), generator=generator),
        )
        for size in batch_sizes
    }
    steps = {
        (size, name): training_step(
            net, optimizers[name], *batches[size], retraction_steps if name == "lipschitz" else 0
        )
        for size in batch_sizes
        for name, net in (("plain", twin), ("lipschitz", model))
    }
    weights_step = weight_recomputation(model)
    # wall-clock and CPU seconds of this process: with one thread the CPU time is the step's own
    # work, which other processes on a shared machine slow down far less than the wall clock
    times: dict = {(key, clock): [] for key in steps for clock in CLOCKS}
    weight_times: dict[str, list[float]] = {clock: [] for clock in CLOCKS}
    for index in range(warmup + rounds):
        elapsed = _timed(weights_step)
        if index >= warmup:
            for clock in CLOCKS:
                weight_times[clock].append(elapsed[clock])
        for size in batch_sizes:
            order = ("plain", "lipschitz") if index % 2 == 0 else ("lipschitz", "plain")
            for name in order:
                elapsed = _timed(steps[(size, name)])
                if index >= warmup:
                    for clock in CLOCKS:
                        times[((size, name), clock)].append(elapsed[clock])
        print(
            f"  round {index + 1}/{warmup + rounds} done{' (warm-up)' if index < warmup else ''}", flush=True
        )
    layers = len(constrained_layers(model))
    print(
        f"  weight recomputation alone (forward + backward of {layers} constrained weights): "
        f"{1000 * statistics.median(weight_times['wall']):.0f} ms wall, "
        f"{1000 * statistics.median(weight_times['cpu']):.0f} ms CPU (medians of {rounds})"
    )
    result["weights_s"] = statistics.median(weight_times["wall"])
    result["cpu_weights_s"] = statistics.median(weight_times["cpu"])
    result["batches"] = {}
    for size in batch_sizes:
        row: dict = {}
        for clock in CLOCKS:
            plain, lipschitz = times[((size, "plain"), clock)], times[((size, "lipschitz"), clock)]
            ratio, low, high = paired_ratio(lipschitz, plain)
            share, share_low, share_high = paired_ratio(weight_times[clock], plain)
            print(
                f"  batch {size:3d} {clock:4s} plain {1000 * statistics.median(plain):8.0f} ms  1-Lipschitz "
                f"{1000 * statistics.median(lipschitz):8.0f} ms  ratio {ratio:5.2f}x (quartiles {low:.2f}-{high:.2f})"
                f"  weights / plain step {100 * share:5.1f} % (quartiles {100 * share_low:.1f}-{100 * share_high:.1f})"
            )
            prefix = "" if clock == "wall" else "cpu_"
            row.update({
                f"{prefix}plain_s": statistics.median(plain),
                f"{prefix}lipschitz_s": statistics.median(lipschitz),
                f"{prefix}ratio": ratio,
                f"{prefix}ratio_quartiles": [low, high],
                f"{prefix}weights_share": share,
                f"{prefix}weights_share_quartiles": [share_low, share_high],
            })  # fmt: skip
        result["batches"][str(size)] = row
    del steps, optimizers, batches
    gc.collect()
    evaluation = evaluation_path(model, image_size)
    print(
        f"  eval: first forward after a weight change {evaluation['first_eval_forward_s']:.1f} s "
        f"(recomputation without a graph {evaluation['recompute_no_grad_s']:.1f} s, certification "
        f"{evaluation['certification_s']:.1f} s), then {1000 * evaluation['cached_eval_forward_s']:.0f} ms "
        "with the cached weights (batch 2)"
    )
    result["evaluation"] = evaluation
    return result


def plot(results: list[dict], path: Path, title: str, clock: str = "cpu") -> None:
    """Ratio against batch size (median, quartile bars) and the weights' share, one colour per network."""
    prefix = "" if clock == "wall" else "cpu_"
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for index, result in enumerate(results):
        colour = f"C{index}"
        sizes = sorted(int(size) for size in result["batches"])
        rows = [result["batches"][str(size)] for size in sizes]
        ratios = [row[f"{prefix}ratio"] for row in rows]
        quartiles = [row[f"{prefix}ratio_quartiles"] for row in rows]
        errors = [[ratio - low for ratio, (low, _) in zip(ratios, quartiles, strict=True)],
                  [high - ratio for ratio, (_, high) in zip(ratios, quartiles, strict=True)]]  # fmt: skip
        left.errorbar(sizes, ratios, yerr=errors, marker="o", capsize=3, color=colour, label=result["label"])
        shares = [100 * row[f"{prefix}weights_share"] for row in rows]
        right.plot(sizes, shares, marker="s", color=colour, label=result["label"])
    left.axhline(1.3, color="grey", linestyle="--", linewidth=1, label="target 1.3x")
    left.axhline(1.0, color="black", linewidth=0.5)
    right.axhline(15, color="grey", linestyle="--", linewidth=1, label="target 15 %")
    sizes = sorted({int(size) for result in results for size in result["batches"]})
    image_sizes = sorted({result.get("image_size", 224) for result in results})
    for axis in (left, right):
        axis.set_xscale("log", base=2)
        axis.set_xticks(sizes, [str(size) for size in sizes])
        axis.set_xlabel(f"per-device batch ({'/'.join(f'{size}x{size}' for size in image_sizes)} images)")
        axis.legend(fontsize=8)
        axis.grid(alpha=0.3)
    clock_name = "CPU time" if clock == "cpu" else "wall-clock time"
    left.set_ylabel(f"training step, 1-Lipschitz / plain twin ({clock_name})")
    right.set_ylabel(f"weight recomputation / plain step (%, {clock_name})")
    left.set_ylim(bottom=0.9)
    right.set_yscale("log")
    ticks = [5, 10, 15, 25, 50, 100, 200, 400, 800]
    right.set_yticks(ticks, [str(tick) for tick in ticks])
    right.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    figure.suptitle(f"{title}; medians and quartiles of the per-round ratios", fontsize=10)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    print(f"\nplot written to {path}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--widths", type=float, nargs="+", default=[1.0, 1.41])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[2, 8, 32])
    parser.add_argument(
        "--rounds", type=int, default=6, help="timed rounds (medians and quartiles over them)"
    )
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--num-outputs", type=int, default=1000)
    parser.add_argument("--stage-blocks", type=int, nargs="+", default=[3, 4, 6, 3])
    parser.add_argument("--variant", choices=["standard", "norm-preserving"], default="standard")
    parser.add_argument("--pretrain-steps", type=int, default=0)
    parser.add_argument("--pretrain-image-size", type=int, default=32)
    parser.add_argument(
        "--retraction-steps", type=int, default=0, help="retract the raw weights after every step"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--json", type=Path, help="write the figures to this file")
    parser.add_argument("--plot", type=Path, help="write the tax curve (PNG) to this file")
    parser.add_argument("--plot-from", type=Path, nargs="+", help="only plot these --json files together")
    parser.add_argument("--plot-clock", choices=CLOCKS, default="cpu", help="the times the plot shows")
    args = parser.parse_args()
    if args.plot_from:
        results = [entry for path in args.plot_from for entry in json.loads(path.read_text())["results"]]
        conditions = dict.fromkeys(json.loads(path.read_text())["conditions"] for path in args.plot_from)
        plot(results, args.plot or Path("resnet_tax.png"), " / ".join(conditions), args.plot_clock)
        return
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    load = os.getloadavg()
    conditions = f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {os.cpu_count()} cores"
    print(
        f"{conditions}, {args.rounds} rounds; load average at start {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}"
    )
    results = [
        measure_width(
            width,
            args.batch_sizes,
            args.rounds,
            args.warmup,
            args.image_size,
            args.num_outputs,
            tuple(args.stage_blocks),
            args.variant,
            args.pretrain_steps,
            args.pretrain_image_size,
            args.retraction_steps,
        )
        for width in args.widths
    ]
    load = os.getloadavg()
    print(f"\nload average at the end {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}")
    if args.json:
        args.json.write_text(json.dumps({"conditions": conditions, "results": results}, indent=1))
    if args.plot:
        plot(results, args.plot, conditions, args.plot_clock)


if __name__ == "__main__":
    main()
