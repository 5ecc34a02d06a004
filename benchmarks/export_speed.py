"""Inference time of the exported model (``vanilla_export``) against the plain twin (``unconstrained_twin``).

    python benchmarks/export_speed.py              # MLP, ConvNet, small ResNet at batch 1 and 256, 1 and 2 threads
    python benchmarks/export_speed.py --parts      # also each exported operation against its plain counterpart

The exported model computes the same function as the 1-Lipschitz one with plain layers and torch
operations; the twin has the same architecture with ReLU, max pooling and global average pooling.
Both run under ``torch.inference_mode`` in the same process, interleaved: every round times a
block of calls of one, then of the other (alternating which goes first), so a shared machine slows
both alike. Printed: the median over rounds of the per-round ratio exported / twin, with its
quartiles, and each model's median time per call.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lightning_ot.models import LipschitzConvNet, LipschitzMLP, LipschitzResNet, unconstrained_twin
from lightning_ot.nn import L2NormPool2d, MaxMin, vanilla_export

MODELS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "MLP 64-256-256-256-10 (quickstart)": (
        lambda: LipschitzMLP(64, 10, hidden_features=(256, 256, 256)),
        (1, 8, 8),
    ),
    "ConvNet 5 conv + 2 linear, 1x28x28": (lambda: LipschitzConvNet(1, 10, image_size=28), (1, 28, 28)),
    "ResNet x0.25, 1 block per stage, 3x64x64, normalized": (
        lambda: LipschitzResNet(
            3,
            10,
            width_multiplier=0.25,
            stage_blocks=(1, 1, 1, 1),
            normalize_mean=[0.485, 0.456, 0.406],
            normalize_std=[1.0, 1.0, 1.0],
        ),
        (3, 64, 64),
    ),
}


def calls_per_block(function: Callable[[], object], seconds: float) -> int:
    """How many calls take about ``seconds`` (at least one), so that tiny batches are timed in blocks."""
    function()
    start = time.perf_counter()
    function()
    once = max(time.perf_counter() - start, 1e-6)
    return max(1, round(seconds / once))


def interleaved_ratio(
    candidate: Callable[[], object], baseline: Callable[[], object], rounds: int, block_seconds: float
) -> tuple[float, float, float, float, float]:
    """Median and quartiles of ``candidate / baseline`` over rounds, and the two median times per call."""
    calls = calls_per_block(baseline, block_seconds)
    candidate()  # warm-up
    times: dict[str, list[float]] = {"candidate": [], "baseline": []}
    for index in range(rounds):
        order = [("candidate", candidate), ("baseline", baseline)]
        for name, function in order if index % 2 == 0 else order[::-1]:
            start = time.perf_counter()
            for _ in range(calls):
                function()
            times[name].append((time.perf_counter() - start) / calls)
    ratios = [value / base for value, base in zip(times["candidate"], times["baseline"], strict=True)]
    quartiles = statistics.quantiles(ratios, n=4)
    return (
        statistics.median(ratios),
        quartiles[0],
        quartiles[2],
        statistics.median(times["candidate"]),
        statistics.median(times["baseline"]),
    )


def inference(module: nn.Module, batch: Tensor) -> Callable[[], object]:
    def call() -> object:
        with torch.inference_mode():
            return module(batch)

    return call


def report(label: str, figures: tuple[float, float, float, float, float], names: tuple[str, str]) -> None:
    ratio, low, high, candidate, baseline = figures
    print(
        f"  {label:34s} {names[0]} {1000 * candidate:9.3f} ms  {names[1]} {1000 * baseline:9.3f} ms  "
        f"ratio {ratio:5.2f}x (quartiles {low:.2f}-{high:.2f})"
    )


def parts(batch_size: int, rounds: int, block_seconds: float) -> None:
    """The exported MaxMin and L2-norm pooling alone, on the ConvNet's 32 x 28 x 28 features."""
    features = torch.randn(batch_size, 32, 28, 28)
    cases = {
        "MaxMin / ReLU": (MaxMin(), nn.ReLU()),
        "L2-norm pool / max pool": (L2NormPool2d(2), nn.MaxPool2d(2)),
        "both / ReLU + max pool": (
            nn.Sequential(MaxMin(), L2NormPool2d(2)),
            nn.Sequential(nn.ReLU(), nn.MaxPool2d(2)),
        ),
    }
    for label, (layer, baseline) in cases.items():
        candidate = vanilla_export(nn.Sequential(layer))
        figures = interleaved_ratio(
            inference(candidate, features), inference(baseline, features), rounds, block_seconds
        )
        report(f"{label}, batch {batch_size}", figures, ("exported", "plain"))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 256])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--block-seconds", type=float, default=0.05, help="time of one block of calls")
    parser.add_argument("--models", nargs="+", default=None, help="substrings of the model names to run")
    parser.add_argument("--parts", action="store_true", help="also time each exported operation alone")
    args = parser.parse_args()
    print(f"torch {torch.__version__}; threads {args.threads}; {args.rounds} interleaved rounds")
    for threads in args.threads:
        torch.set_num_threads(threads)
        for name, (factory, shape) in MODELS.items():
            if args.models and not any(part in name for part in args.models):
                continue
            torch.manual_seed(0)
            model = factory().eval()
            exported = vanilla_export(model)
            twin = unconstrained_twin(model).eval()
            print(f"\n== {name}, {threads} thread(s): exported / plain twin, inference")
            for batch_size in args.batch_sizes:
                batch = torch.rand(batch_size, *shape)
                torch.testing.assert_close(exported(batch), model(batch).detach(), atol=1e-4, rtol=0)
                figures = interleaved_ratio(
                    inference(exported, batch), inference(twin, batch), args.rounds, args.block_seconds
                )
                report(f"batch {batch_size}", figures, ("exported", "twin"))
        if args.parts:
            print(f"\n== exported operations of the ConvNet's first stage, {threads} thread(s)")
            for batch_size in args.batch_sizes:
                parts(batch_size, args.rounds, args.block_seconds)


if __name__ == "__main__":
    main()
