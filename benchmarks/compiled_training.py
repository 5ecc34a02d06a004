"""Training step of a compiled backbone against the same backbone eager, both with retraction.

    python benchmarks/compiled_training.py --threads 1
    python benchmarks/compiled_training.py --threads 1 --backends aot_eager inductor --variant 512/3,6

An eager training forward uses the raw matrices of the orthogonal layers as they are once a
retraction has kept them near orthonormal (``OTClassifier(retraction_steps=1)``): no Björck step
forward or backward. A compiled forward does not (the freshness of a retracted matrix is Python
state that ``torch.compile`` would turn into a recompilation at every step), so it orthonormalizes
every weight with Björck's iteration, forward and backward, at every step. This times the training
step (forward, cross-entropy, backward, Adam, retraction) of the ``mnist5k_fast`` backbone (or
``--variant``, as in ``tight_convnet_variants.py``) eager and compiled with each backend, after
``--pretrain-steps`` Adam steps with retraction. Each compiled network is timed against the eager one
in the same rounds, called in turn (``lipschitz_tax.interleaved_times``); printed: the medians, the
median of the per-round ratios with its quartiles, and the time of the first (compiling) step.

On a CPU most of the compiled step is denormal arithmetic: the Björck steps run after the iteration
has converged, forward and backward, multiply deviations from orthonormality so small that their
products fall below float32's normal range, where a matrix product is some 30x slower. ``--flush-denormal`` sets
``torch.set_flush_denormal(True)`` (flush them to zero) for the whole run, eager included.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lipschitz_tax import interleaved_times, paired_ratio, pretrain, training_step
from tight_convnet_variants import parse_variant, variant_network


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--variant", default="512x2/3,6", help="HIDDEN/STAGE_CONVS, default mnist5k_fast's")
    parser.add_argument("--backends", nargs="+", default=["aot_eager", "inductor"])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--pretrain-steps", type=int, default=50)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--flush-denormal", action="store_true", help="torch.set_flush_denormal(True)")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.flush_denormal and not torch.set_flush_denormal(True):
        parser.error("--flush-denormal: this CPU cannot flush denormal numbers")
    try:
        hidden_features, hidden_groups, stage_convs = parse_variant(args.variant)
        variant_network(hidden_features, hidden_groups, stage_convs)
    except ValueError as error:
        parser.error(f"--variant {args.variant}: {error}")
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch_size}, "
        f"{args.variant}, after {args.pretrain_steps} Adam steps with retraction"
        + (", denormals flushed to zero" if args.flush_denormal else "")
    )
    batch = torch.rand(args.batch_size, 1, 28, 28)
    target = torch.randint(0, 10, (args.batch_size,))

    def network_in_training() -> torch.nn.Module:
        torch.manual_seed(0)  # the same network and the same pretraining for every backend
        model = variant_network(hidden_features, hidden_groups, stage_convs)
        pretrain(model, (1, 28, 28), 10, args.pretrain_steps, 5e-3, retraction_steps=1)
        return model

    eager = training_step(network_in_training(), batch, target, retraction_steps=1)
    for backend in args.backends:
        torch._dynamo.reset()  # one compiled network at a time
        model = network_in_training()
        model.compile(backend=backend)
        compiled = training_step(model, batch, target, retraction_steps=1)
        start = time.perf_counter()
        compiled()
        first = time.perf_counter() - start
        times = interleaved_times({"eager": eager, backend: compiled}, args.repeats, args.warmup)
        ratio, low, high = paired_ratio(times[backend], times["eager"])
        print(
            f"  {backend:10s} {1000 * statistics.median(times[backend]):8.1f} ms/step, eager "
            f"{1000 * statistics.median(times['eager']):6.1f} ms   ratio {ratio:.1f}x "
            f"(quartiles {low:.1f}-{high:.1f}); first step {first:.1f} s"
        )


if __name__ == "__main__":
    main()
