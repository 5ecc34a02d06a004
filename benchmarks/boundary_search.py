"""Cost and result of the two boundary searches: Newton's walk along the gradient against the nearest
boundary point found from where it lands (``counterfactual(..., mode="nearest")``).

    python benchmarks/boundary_search.py [--epochs 10] [--threads 1] [--repeats 5] [--refinements 10 20 40]
    python benchmarks/boundary_search.py --checkpoint CKPT --recipe mnist5k [--limit 1000]

Without ``--checkpoint`` the quickstart recipe is trained for ``--epochs`` epochs (a few seconds) and
its validation digits are explained; with one, the checkpoint's OTClassifier on the validation set
of ``--recipe``. Printed for each search: the median wall time over ``--repeats``
runs and its ratio to Newton's (measured in the same run, interleaved), and the median, 10th and 90th
percentiles of the distance to the boundary point found over the certified radius (1 is tight; the
certificate is a lower bound, each search an upper bound of the distance to the boundary).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lightning_ot import OTClassifier
from lightning_ot.explain import counterfactual
from lightning_ot.explain_cli import validation_tensors
from lightning_ot.metrics import certified_radius
from lightning_ot.nn import cached_weights


def trained_quickstart(epochs: int) -> tuple[torch.nn.Module, torch.Tensor]:
    """The quickstart recipe's network trained ``epochs`` epochs (no logger, no checkpoint), and the
    recipe's validation digits."""
    from lightning_ot.fit import main as fit

    with tempfile.TemporaryDirectory() as directory:
        cli = fit(
            [
                "--recipe", "quickstart",
                "--trainer.max_epochs", str(epochs),
                "--trainer.logger", "false",
                "--trainer.enable_checkpointing", "false",
                "--trainer.enable_progress_bar", "false",
                "--trainer.enable_model_summary", "false",
                "--trainer.callbacks", "[]",
                "--trainer.default_root_dir", directory,
            ]
        )  # fmt: skip
    model = cli.model.backbone.eval()
    return model, validation_tensors(cli.datamodule)[0]


def checkpoint_model(path: Path, recipe: str, limit: int) -> tuple[torch.nn.Module, torch.Tensor]:
    from lightning_ot.explain_cli import load_data_inputs
    from lightning_ot.recipes import recipe_path

    model = OTClassifier.load_from_checkpoint(path, map_location="cpu").eval()
    inputs = load_data_inputs(recipe_path(recipe), limit).images[:limit].float()
    return model.backbone.eval(), inputs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", type=Path, default=None, help="an OTClassifier checkpoint")
    parser.add_argument(
        "--recipe", default="mnist5k", help="the recipe whose validation set --checkpoint explains"
    )
    parser.add_argument("--limit", type=int, default=1000, help="validation inputs explained at most")
    parser.add_argument("--refinements", type=int, nargs="+", default=[10, 20, 40])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=10, help="quickstart epochs without --checkpoint")
    options = parser.parse_args(argv)
    torch.set_num_threads(options.threads)
    if options.checkpoint is None:
        model, inputs = trained_quickstart(options.epochs)
        source = f"the quickstart network after {options.epochs} epochs, {len(inputs)} validation 8x8 digits"
    else:
        model, inputs = checkpoint_model(options.checkpoint, options.recipe, options.limit)
        source = f"{options.checkpoint.name}, {len(inputs)} validation inputs of {options.recipe}"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); {source}")
    searches = {"newton": {"mode": "boundary"}}
    searches.update(
        {
            f"nearest, {count} rounds": {"mode": "nearest", "refinements": count}
            for count in options.refinements
        }
    )
    times: dict[str, list[float]] = {name: [] for name in searches}
    results = {}
    with cached_weights():
        radius = certified_radius(model(inputs).detach(), 1.0, "joint")
        for _ in range(options.repeats):
            for name, arguments in searches.items():
                start = time.perf_counter()
                results[name] = counterfactual(model, inputs, tolerance=1e-5, **arguments)
                times[name].append(time.perf_counter() - start)
    baseline = statistics.median(times["newton"])
    for name, result in results.items():
        reached = (result.on_boundary | result.flipped)[:, 0] & (radius > 0)
        ratio = (result.distances[reached, 0] / radius[reached]).double()
        median = statistics.median(times[name])
        print(
            f"  {name:<20} {median * 1e3:8.1f} ms  ({median / baseline:5.1f}x Newton's)  "
            f"boundary / radius: median {ratio.quantile(0.5):.4f}, 10th percentile {ratio.quantile(0.1):.4f}, "
            f"90th {ratio.quantile(0.9):.4f}, reached {reached.double().mean():.1%}"
        )


if __name__ == "__main__":
    main()
