"""Where the per-step constant of the ImageNet-scale LipschitzResNet goes: the weights, part by part.

    python benchmarks/resnet_constant.py --threads 1 [--width 1.0] [--repeats 5] [--pretrain-steps 100]
    python benchmarks/resnet_constant.py --threads 1 --pretrain-steps 100 --retraction-steps 1

Every orthogonal layer recomputes its weight from raw parameters at each training step, forward and
backward, whatever the batch. This times, per group of layers of the same shape (forward and
backward, median of ``--repeats`` interleaved rounds), the parts of that recomputation:

- Björck: the orthonormalization of each layer's square matrix (``orthogonal``, BCOP's first
  factor), of the 1x1 transitions and of the head, with the number of Björck steps it ran;
- BCOP projections: the orthonormal bases of the ``[P, I - P]`` two-tap convolutions (QR on a CPU);
- kernel assembly: applying the ``k - 1`` horizontal and vertical projection steps to build the
  ``k x k`` kernel (the whole weight minus the two parts above);
- RKO blocks: the reshaped kernel orthonormalization of strided convolutions (the ResNet has none:
  it downsamples by space-to-depth).

``--pretrain-steps N`` first trains N Adam steps at lr 1e-3 on random 32x32 images, so that the raw
weights drift as in training and Björck needs more steps; ``--retraction-steps 1`` retracts the raw
weights after each of those steps (``lightning_ot.nn.retract_weights_``, as
``OTClassifier(retraction_steps=1)`` does), which keeps them near orthonormal.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import lightning_ot.nn.linear as linear_module
from lightning_ot.models import LipschitzResNet
from lightning_ot.nn import OrthogonalConv2d, OrthogonalLinear, bjorck_orthonormalize, retract_weights_
from lightning_ot.nn.conv import _orthonormal_bases


def _forward_backward(function: Callable[[], torch.Tensor]) -> Callable[[], None]:
    def run() -> None:
        result = function()
        result.backward(torch.ones_like(result))

    return run


def _bjorck_steps_run(matrix: torch.Tensor, iterations: int) -> int:
    """The number of Björck steps the early stop lets run on this matrix (its wide orientation)."""
    trace = linear_module._BjorckTrace()
    with torch.no_grad():
        wide = matrix if matrix.shape[-2] <= matrix.shape[-1] else matrix.mT
        linear_module._bjorck_steps(wide, iterations, 1e-3, trace)
    return len(trace.steps)


def parts_of(layer: torch.nn.Module) -> dict[str, Callable[[], None]]:
    if isinstance(layer, OrthogonalLinear):
        return {"Björck": _forward_backward(layer.compute_weight)}
    assert isinstance(layer, OrthogonalConv2d)
    parts: dict[str, Callable[[], None]] = {}
    if layer.orthogonal is not None:
        orthogonal = layer.orthogonal
        parts["Björck"] = _forward_backward(lambda: bjorck_orthonormalize(orthogonal, layer.iterations))
    if layer.projections is not None:
        projections = layer.projections
        parts["BCOP projections"] = _forward_backward(
            lambda: _orthonormal_bases(projections, layer.iterations)
        )
    if layer.reshaped is not None:
        reshaped = layer.reshaped
        parts["RKO blocks"] = _forward_backward(lambda: bjorck_orthonormalize(reshaped, layer.iterations))
    parts["whole weight"] = _forward_backward(layer.compute_weight)
    return parts


def group_name(layer: torch.nn.Module) -> str:
    if isinstance(layer, OrthogonalLinear):
        return f"linear {layer.in_features} -> {layer.out_features}"
    size, step = layer.kernel_size[0], layer.stride[0]
    return f"conv {size}x{size} {layer.in_channels} -> {layer.out_channels}" + (
        f" stride {step}" if step > 1 else ""
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--num-outputs", type=int, default=1000)
    parser.add_argument("--norm-preserving", action="store_true")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--pretrain-steps", type=int, default=0)
    parser.add_argument("--retraction-steps", type=int, default=0, help="retract after each pretraining step")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    options = {"norm_preserving": True} if args.norm_preserving else {}
    model = LipschitzResNet(3, args.num_outputs, width_multiplier=args.width, **options).train()
    if args.pretrain_steps:
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        generator = torch.Generator().manual_seed(1)
        for _ in range(args.pretrain_steps):
            images = torch.rand(8, 3, 32, 32, generator=generator)
            labels = torch.randint(0, args.num_outputs, (8,), generator=generator)
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(images), labels).backward()
            optimizer.step()
            if args.retraction_steps:
                retract_weights_(model, args.retraction_steps)
    layers = [m for m in model.modules() if isinstance(m, OrthogonalConv2d | OrthogonalLinear)]
    groups: dict[str, list[torch.nn.Module]] = defaultdict(list)
    for layer in layers:
        groups[group_name(layer)].append(layer)
    load = os.getloadavg()[0]
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), load average {load:.1f}; width "
        f"{args.width:g}{' norm-preserving' if args.norm_preserving else ''}, {len(layers)} orthogonal layers"
        + (
            f", after {args.pretrain_steps} Adam steps at lr 1e-3"
            + (
                f", retracted after each ({args.retraction_steps} Björck step)"
                if args.retraction_steps
                else ""
            )
            if args.pretrain_steps
            else ", at initialization"
        )
    )
    runs = {(name, part): [parts_of(layer)[part] for layer in members] for name, members in groups.items()
            for part in parts_of(members[0])}  # fmt: skip
    times: dict[tuple[str, str], list[float]] = {key: [] for key in runs}
    for _ in range(args.repeats + 1):
        for key, functions in runs.items():
            start = time.perf_counter()
            for function in functions:
                function()
            times[key].append(time.perf_counter() - start)
            model.zero_grad(set_to_none=True)
    median = {key: statistics.median(values[1:]) for key, values in times.items()}
    totals: dict[str, float] = defaultdict(float)
    print(f"\n{'group':34s} {'layers':>6s} {'Björck steps':>12s} {'Björck':>9s} {'projections':>11s} "
          f"{'assembly':>9s} {'whole':>9s}  (ms, forward + backward, all layers of the group)")  # fmt: skip
    for name, members in groups.items():
        whole = median.get((name, "whole weight"), median.get((name, "Björck"), 0.0))
        bjorck = median.get((name, "Björck"), 0.0)
        rko = median.get((name, "RKO blocks"), 0.0)
        projections = median.get((name, "BCOP projections"), 0.0)
        assembly = (
            max(whole - bjorck - rko - projections, 0.0) if (name, "BCOP projections") in median else 0.0
        )
        matrices = [getattr(m, "orthogonal", None) for m in members]
        matrices = [
            m if m is not None else getattr(layer, "weight_orig", None)
            for m, layer in zip(matrices, members, strict=True)
        ]
        counts = sorted(
            {
                _bjorck_steps_run(matrix.detach(), members[0].iterations)
                for matrix in matrices
                if matrix is not None
            }
        )
        steps = "-".join(str(count) for count in (counts[0], counts[-1])) if counts else "-"
        print(f"{name:34s} {len(members):6d} {steps:>12s} {1000 * bjorck:9.0f} {1000 * projections:11.0f} "
              f"{1000 * assembly:9.0f} {1000 * whole:9.0f}")  # fmt: skip
        totals["Björck"] += bjorck
        totals["RKO blocks"] += rko
        totals["BCOP projections"] += projections
        totals["kernel assembly"] += assembly
        totals["whole"] += whole
    print(
        f"\ntotal {1000 * totals['whole']:.0f} ms: Björck {1000 * totals['Björck']:.0f} ms "
        f"({100 * totals['Björck'] / totals['whole']:.0f} %), BCOP projections {1000 * totals['BCOP projections']:.0f} ms "
        f"({100 * totals['BCOP projections'] / totals['whole']:.0f} %), kernel assembly "
        f"{1000 * totals['kernel assembly']:.0f} ms ({100 * totals['kernel assembly'] / totals['whole']:.0f} %), "
        + (
            f"RKO blocks {1000 * totals['RKO blocks']:.0f} ms"
            if totals["RKO blocks"]
            else "RKO blocks 0 ms (no strided convolution)"
        )
    )


if __name__ == "__main__":
    main()
