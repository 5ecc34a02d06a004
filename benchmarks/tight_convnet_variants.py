"""The training-step tax of `NormPreservingConvNet` variants, timed in one interleaved run.

    python benchmarks/tight_convnet_variants.py --threads 1
    python benchmarks/tight_convnet_variants.py --threads 1 --batch-size 256 --variants 512/3,6 256/3,6
    python benchmarks/tight_convnet_variants.py --threads 1 --variants 512/3,6 512x2/3,6 512x4/3,6

Each variant is ``HIDDEN/STAGE_CONVS``: the hidden widths of the head (comma-separated, empty for
none: ``/3,6`` is a 784 -> 10 head), each optionally with ``xG`` for a layer of ``G`` diagonal blocks
(``hidden_groups``: ``512x2`` is 784 -> 512 as two 392 -> 256 blocks), and the orthogonal
convolutions per stage. The mnist5k recipe's backbone is ``512/3,6`` and mnist5k_fast's
``512x2/3,6`` (kernel sizes 5 and 3). Every variant is first trained for
``--pretrain-steps`` Adam steps with retraction after each step, as ``OTClassifier(retraction_steps=1)``
trains, so that the timing is of a network in training, not at initialization. Then the training
steps (forward, cross-entropy, backward, Adam, retraction) of every variant and of its plain twin
(the same layers as ``nn.Linear`` / ``nn.Conv2d`` with ReLU) are called in turn, round after round,
so that a load spike on a shared machine slows all of them alike; the script prints each variant's
median per-round ratio to its own twin, with the quartiles, the milliseconds per step, and the
gradient norm ``||grad f_k||`` of its top output on random images (1 = tight).

With ``--straightness-weight W`` each variant is also timed with
:func:`lightning_ot.losses.straightness_penalty` added to its loss (``OTClassifier(straightness_weight=W)``:
one input gradient and one more forward and backward pass per step), against the same twin.

The cost that does not shrink with the batch is the head's retraction, which is O(m^2 n) for an
m x n matrix (two 512 x 512 x 784 products for the recipe's head): the variants show what a narrower
head or a larger batch buys, the accuracy and tightness they cost are in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lipschitz_tax import interleaved_times, paired_ratio, pretrain, training_step

from lightning_ot.models import NormPreservingConvNet, unconstrained_twin
from lightning_ot.nn import gradient_norms


def parse_variant(text: str) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """``"512/3,6"`` -> ``((512,), (1,), (3, 6))``; ``"784x4,512x2/3,6"`` -> ``((784, 512), (4, 2),
    (3, 6))``; ``"/3,6"`` -> ``((), (), (3, 6))``: hidden widths, their groups, stage convolutions."""
    hidden, _, convs = text.partition("/")
    try:
        layers = [entry.partition("x") for entry in hidden.split(",") if entry]
        hidden_features = tuple(int(width) for width, _, _ in layers)
        hidden_groups = tuple(int(groups or 1) for _, _, groups in layers)
        stage_convs = tuple(int(count) for count in (convs or "3,6").split(","))
    except ValueError:
        raise ValueError(
            f"--variants: expected HIDDEN/STAGE_CONVS such as 512/3,6, 512x2/3,6 or 256,256/3,6, got {text!r}"
        ) from None
    return hidden_features, hidden_groups, stage_convs


def variant_network(
    hidden_features: tuple[int, ...], hidden_groups: tuple[int, ...], stage_convs: tuple[int, ...]
) -> NormPreservingConvNet:
    """The mnist5k recipes' ``NormPreservingConvNet`` (1 x 28 x 28, ten outputs, kernel sizes 5 and 3)
    with this head and these stages, as :func:`parse_variant` gives them."""
    return NormPreservingConvNet(
        1,
        10,
        28,
        stage_convs=stage_convs,
        kernel_size=(5, 3),
        hidden_features=hidden_features,
        hidden_groups=hidden_groups,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--variants", nargs="+", default=["512x2/3,6", "512/3,6", "512x4/3,6", "256/3,6", "/3,6"]
    )
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--pretrain-steps", type=int, default=200)
    parser.add_argument("--pretrain-lr", type=float, default=5e-3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument(
        "--straightness-weight",
        type=float,
        default=0.0,
        help="also time each variant with the straightness penalty of this weight in its loss",
    )
    args = parser.parse_args()
    if args.straightness_weight < 0:
        parser.error(f"--straightness-weight: expected a number >= 0, got {args.straightness_weight}")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    try:
        variants = {text: parse_variant(text) for text in args.variants}
    except ValueError as error:
        parser.error(str(error))
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch_size}, "
        f"after {args.pretrain_steps} Adam steps at lr {args.pretrain_lr:g} with retraction"
    )
    batch = torch.rand(args.batch_size, 1, 28, 28)
    target = torch.randint(0, 10, (args.batch_size,))
    probes = torch.rand(64, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    steps = {}
    norms = {}
    for text, (hidden_features, hidden_groups, stage_convs) in variants.items():
        try:
            model = variant_network(hidden_features, hidden_groups, stage_convs)
        except ValueError as error:
            parser.error(f"--variants {text}: {error}")
        twin = unconstrained_twin(model)
        pretrain(model, (1, 28, 28), 10, args.pretrain_steps, args.pretrain_lr, retraction_steps=1)
        # before `training_step`, which puts the model back in training mode
        norms[text] = gradient_norms(model.eval(), probes)
        steps[f"twin {text}"] = training_step(twin, batch, target)
        steps[text] = training_step(model, batch, target, retraction_steps=1)
        if args.straightness_weight:
            steps[f"{text} +straightness"] = training_step(
                model, batch, target, retraction_steps=1, straightness_weight=args.straightness_weight
            )
    times = interleaved_times(steps, args.repeats, args.warmup)
    for text in variants:
        ratio, low, high = paired_ratio(times[text], times[f"twin {text}"])
        print(
            f"  {text:14s} {1000 * statistics.median(times[text]):7.1f} ms/step, twin "
            f"{1000 * statistics.median(times[f'twin {text}']):7.1f} ms   ratio {ratio:.2f}x "
            f"(quartiles {low:.2f}-{high:.2f}); ||grad f_k|| of the top output on 64 random images: "
            f"median {norms[text].median():.3f}, 10th percentile {norms[text].quantile(0.1):.3f}"
        )
        if args.straightness_weight:
            name = f"{text} +straightness"
            ratio, low, high = paired_ratio(times[name], times[f"twin {text}"])
            print(
                f"  {name:14s} {1000 * statistics.median(times[name]):7.1f} ms/step, the same twin   "
                f"ratio {ratio:.2f}x (quartiles {low:.2f}-{high:.2f})"
            )


if __name__ == "__main__":
    main()
