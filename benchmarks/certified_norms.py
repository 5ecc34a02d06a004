"""Operator norms of the orthogonal layers' float32 weights, measured in float64, over a stress set.

    python benchmarks/certified_norms.py              # 64 configurations, about a minute on one core
    python benchmarks/certified_norms.py --steps 20   # more Adam steps before measuring

Each layer (OrthogonalLinear square / wide / tall, OrthogonalConv2d over kernel sizes, strides and
channel ratios) takes a few large Adam steps on a random objective, then the operator norm of two
weights is measured in float64: the *training* weight (``compute_weight()``: Björck / BCOP in float32,
what the eval weight was before certification) and the *eval* weight (cached and certified by
``certify_weight``). Linear layers: the largest singular value; convolutions: the norm on a circular
domain by the FFT (which bounds every zero-padded operator that fits in it). Printed: the largest
norm of each, per kind, and the largest relative difference between the two weights.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lightning_ot.nn import OrthogonalConv2d, OrthogonalLinear
from lightning_ot.nn.bounds import polyphase_kernel

LINEAR_SIZES = [
    (16, 16),
    (64, 64),
    (256, 256),
    (784, 512),
    (32, 96),
    (96, 32),
    (64, 256),
    (256, 10),
    (512, 512),
    (10, 256),
]
CHANNELS = [(4, 4), (4, 16), (16, 4), (8, 8), (32, 32), (64, 64), (3, 12)]
KERNELS_STRIDES = [(1, 1), (2, 1), (3, 1), (5, 1), (2, 2), (3, 2), (4, 2), (5, 2)]


def float64_norm(layer: nn.Module, weight: Tensor, size: int = 24) -> float:
    weight = weight.detach().double()
    if isinstance(layer, OrthogonalLinear):
        return float(torch.linalg.matrix_norm(weight, ord=2))
    phases = polyphase_kernel(weight, layer.stride[0])
    symbol = torch.fft.fft2(F.pad(phases, (0, size - phases.shape[-1], 0, size - phases.shape[-2])))
    return float(torch.linalg.matrix_norm(symbol.permute(2, 3, 0, 1), ord=2).max())


def configurations() -> list[tuple[str, nn.Module, tuple[int, ...]]]:
    layers: list[tuple[str, nn.Module, tuple[int, ...]]] = []
    for in_features, out_features in LINEAR_SIZES:
        layers.append(
            (
                f"linear {in_features}->{out_features}",
                OrthogonalLinear(in_features, out_features),
                (in_features,),
            )
        )
    for (in_channels, out_channels), (kernel, stride) in itertools.product(CHANNELS, KERNELS_STRIDES):
        if stride > 1 and out_channels < in_channels and kernel == stride:
            continue
        conv = OrthogonalConv2d(in_channels, out_channels, kernel, stride=stride)
        layers.append((f"conv {in_channels}->{out_channels} k{kernel} s{stride}", conv, (in_channels, 8, 8)))
    return layers


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=5, help="Adam steps (lr 0.05) before measuring")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    layers = configurations()
    print(f"torch {torch.__version__}, {len(layers)} configurations, {args.steps} Adam steps (lr 0.05) each")
    worst: dict[str, dict[str, float]] = {}
    start = time.perf_counter()
    for name, layer, shape in layers:
        optimizer = torch.optim.Adam(layer.parameters(), lr=0.05)
        for _ in range(args.steps):
            optimizer.zero_grad()
            output = layer(torch.randn(4, *shape))
            (output * torch.randn_like(output)).sum().backward()
            optimizer.step()
        layer.eval()
        with torch.no_grad():
            training = layer.compute_weight()
        certified = layer.weight
        kind = name.split()[0]
        figures = worst.setdefault(kind, {"training": 0.0, "eval": 0.0, "difference": 0.0, "count": 0})
        figures["training"] = max(figures["training"], float64_norm(layer, training))
        figures["eval"] = max(figures["eval"], float64_norm(layer, certified))
        difference = (certified.double() - training.double()).norm() / training.double().norm()
        figures["difference"] = max(figures["difference"], float(difference))
        figures["count"] += 1

    def excess(norm: float) -> str:
        return f"1 {'+' if norm >= 1 else '-'} {abs(norm - 1):.3e}"

    for kind, figures in worst.items():
        print(
            f"  {kind:6s} ({figures['count']:2d} configurations)  largest float64 operator norm: "
            f"training weight {excess(figures['training'])}, certified eval weight {excess(figures['eval'])};"
            f"  largest relative difference {figures['difference']:.2e}"
        )
    print(f"  ({time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    main()
