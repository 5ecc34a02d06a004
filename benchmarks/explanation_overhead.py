"""Cost of ExplanationCallback on the quickstart recipe: epoch time with the callback versus without.

    python benchmarks/explanation_overhead.py [--epochs 5] [--repeats 3] [--threads 1]

Each repeat trains the quickstart recipe (its W&B offline logger included) once without and once with
the callback at its recipe settings, alternating which goes first. An epoch is timed from one
``on_train_epoch_start`` to the next (training, validation, logging, checkpointing: everything); the
first epoch of each run is dropped as warm-up. Printed: median epoch time of each condition, their
ratio, the mean time per epoch spent inside the callback over the median epoch time without it, the
median over epochs of the callback's time over the rest of the same epoch (both taken under the same
load, so the least noisy figure on a shared machine), and a paired estimate that also counts any cost
outside the callback's own hooks (the machine is shared: read ratios, not absolute times).
Target: time inside the callback under 5 % of an epoch.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

import lightning.pytorch as pl  # noqa: E402
import torch  # noqa: E402

from lightning_ot.callbacks import ExplanationCallback  # noqa: E402
from lightning_ot.fit import OTLightningCLI  # noqa: E402
from lightning_ot.module import OTClassifier  # noqa: E402
from lightning_ot.recipes import recipe_path  # noqa: E402

TARGET = 0.05


class EpochTimer(pl.Callback):
    """Durations of whole epochs, and of the explanation callback's work in each."""

    def __init__(self, explanation: ExplanationCallback | None) -> None:
        self.explanation = explanation
        self.starts: list[float] = []
        self.end = 0.0
        self.callback_seconds: list[float] = []

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.starts.append(time.perf_counter())

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.explanation is not None and not trainer.sanity_checking:
            # 0 for the epochs the callback skips (every_n_epochs > 1)
            self.callback_seconds.append(self.explanation.last_run_seconds or 0.0)
            self.explanation.last_run_seconds = None

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.end = time.perf_counter()

    def epoch_seconds(self) -> list[float]:
        boundaries = [*self.starts, self.end]
        return [later - earlier for earlier, later in itertools.pairwise(boundaries)][1:]


def paired_differences(durations: list[float], callback_seconds: list[float]) -> list[float]:
    """Epoch time of each epoch where the callback ran minus that of the next epoch where it did not,
    within one run: the machine's load drifts less between neighbouring epochs than between runs."""
    differences = []
    for index in range(len(durations) - 1):
        if callback_seconds[index] > 0 and callback_seconds[index + 1] == 0:
            differences.append(durations[index] - durations[index + 1])
    return differences


def _quantile(values: list[float], fraction: float) -> float:
    return statistics.quantiles(values, n=10, method="inclusive")[round(10 * fraction) - 1]


def run(with_callback: bool, epochs: int, workdir: Path) -> tuple[list[float], list[float]]:
    args = [
        "fit",
        "--config",
        str(recipe_path("quickstart")),
        "--trainer.max_epochs",
        str(epochs),
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.enable_model_summary",
        "false",
        "--trainer.default_root_dir",
        str(workdir),
    ]
    cli = OTLightningCLI(OTClassifier, pl.LightningDataModule, args=args[1:], run=False)
    trainer = cli.trainer
    explanation = next((c for c in trainer.callbacks if isinstance(c, ExplanationCallback)), None)
    if explanation is None:
        raise RuntimeError("the quickstart recipe no longer registers ExplanationCallback")
    if not with_callback:
        trainer.callbacks = [c for c in trainer.callbacks if c is not explanation]
        explanation = None
    timer = EpochTimer(explanation)
    trainer.callbacks.append(timer)
    trainer.fit(cli.model, cli.datamodule)
    for logger in trainer.loggers:
        finish = getattr(getattr(logger, "experiment", None), "finish", None)
        if callable(finish):
            finish()
    return timer.epoch_seconds(), timer.callback_seconds[1:]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--epochs", type=int, default=5, help="epochs per run (the first is not timed)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per condition")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    options = parser.parse_args()
    if options.threads > 0:
        torch.set_num_threads(options.threads)
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    os.environ.setdefault("WANDB_DISABLE_GIT", "true")

    epochs = {False: [], True: []}
    callback_seconds: list[float] = []
    paired: list[float] = []
    shares: list[float] = []  # callback time over the rest of the same epoch
    with tempfile.TemporaryDirectory() as directory:
        previous = Path.cwd()
        os.chdir(directory)  # W&B offline runs and logs go to the temporary directory
        try:
            for repeat in range(options.repeats):
                order = (False, True) if repeat % 2 == 0 else (True, False)
                for with_callback in order:
                    durations, inside = run(with_callback, options.epochs, Path(directory))
                    epochs[with_callback] += durations
                    callback_seconds += inside
                    paired += paired_differences(durations, inside) if with_callback else []
                    shares += [
                        spent / (duration - spent)
                        for duration, spent in zip(durations, inside, strict=True)
                        if with_callback and 0 < spent < duration
                    ]
                    label = "with   " if with_callback else "without"
                    print(f"repeat {repeat} {label}: epochs {', '.join(f'{d:.2f}' for d in durations)} s")
        finally:
            os.chdir(previous)

    without = statistics.median(epochs[False])
    with_ = statistics.median(epochs[True])
    inside = statistics.fmean(callback_seconds)  # mean over epochs: it may run every n-th epoch only
    print()
    print(f"threads {torch.get_num_threads()}, {options.repeats} repeats x {options.epochs - 1} timed epochs")
    print(f"median epoch without callback: {without:.3f} s")
    print(f"median epoch with callback:    {with_:.3f} s")
    overhead = 100 * (with_ / without - 1)
    print(f"ratio with / without:          {with_ / without:.3f}  (overhead {overhead:+.1f} %)")
    print(
        f"callback time per epoch:       {inside:.3f} s = {100 * inside / without:.1f} % of an epoch (mean)"
    )
    if shares:
        print(
            f"callback time / rest of its epoch: {100 * statistics.median(shares):.1f} % "
            f"(median over {len(shares)} epochs; 10-90 %: "
            f"{100 * _quantile(shares, 0.1):.1f}-{100 * _quantile(shares, 0.9):.1f} %)"
        )
    spread = statistics.stdev(epochs[False]) / without if len(epochs[False]) > 1 else float("nan")
    print(
        f"epoch-to-epoch spread without the callback: {100 * spread:.0f} % (the ratio is only that precise)"
    )
    if paired:
        every = len(callback_seconds) / max(1, sum(1 for value in callback_seconds if value > 0))
        per_epoch = statistics.median(paired) / every
        print(
            f"paired estimate (epoch with the callback - next epoch without, median / every {every:g}): "
            f"{per_epoch:.3f} s = {100 * per_epoch / without:.1f} % of an epoch"
        )
    verdict = "meets" if inside / without < TARGET else "misses"
    print(f"target < {100 * TARGET:.0f} % (callback time per epoch): {verdict} it")


if __name__ == "__main__":
    main()
