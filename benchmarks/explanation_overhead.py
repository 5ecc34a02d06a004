"""Cost of ExplanationCallback on a recipe: epoch time with the callback versus without.

    python benchmarks/explanation_overhead.py [--recipe quickstart] [--epochs 5] [--repeats 3] [--threads 1]
        [--metrics-every N]

Each repeat trains the recipe (quickstart by default; its W&B offline logger included) once without
and once with the callback at its recipe settings, alternating which goes first. An epoch is timed from one
``on_train_epoch_start`` to the next (training, validation, logging, checkpointing: everything); the
first epoch of each run is dropped as warm-up. Printed: median epoch time of each condition, their
ratio, the mean time per epoch spent inside the callback over the median epoch time without it, the
median over epochs of the callback's time over the rest of the same epoch (both taken under the same
load), the same two in CPU time of the main thread (what the process itself computed, the least
sensitive to other processes on a shared machine), and a paired estimate that also counts any cost
outside the callback's own hooks (the machine is shared: read ratios, not absolute times). Last,
where the callback's time goes: the median time per run of each of its parts (``explain()``, the
XAI metrics, the grid, the PNG, W&B's ``log_image``, Lightning's ``log_dict`` of its figures).
Target: time inside the callback under 5 % of an epoch.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

import lightning.pytorch as pl  # noqa: E402
import torch  # noqa: E402
from lightning.pytorch.loggers import WandbLogger  # noqa: E402

import lightning_ot.callbacks.explanation as explanation_module  # noqa: E402
from lightning_ot.callbacks import ExplanationCallback  # noqa: E402
from lightning_ot.fit import OTLightningCLI  # noqa: E402
from lightning_ot.module import OTClassifier  # noqa: E402
from lightning_ot.recipes import recipe_path  # noqa: E402

TARGET = 0.05


# (owner, attribute, name of the part): what the callback calls, timed where it is looked up
PARTS = (
    (explanation_module, "explain", "explain()"),
    (ExplanationCallback, "_metrics", "XAI metrics"),
    (explanation_module, "render_explanation", "grid"),
    (explanation_module, "encode_png", "PNG"),
    (WandbLogger, "log_image", "W&B log_image"),
    (pl.LightningModule, "log_dict", "Lightning log_dict"),
)


@contextmanager
def timed_parts(seconds: dict[str, list[float]], inside: Callable[[], bool]) -> Iterator[None]:
    """Record into ``seconds[part]`` the time of each call of the callback's parts (the calls made
    while ``inside()``, i.e. from within its hook: the module's own ``log_dict`` calls are not counted)."""
    originals = [(owner, attribute, owner.__dict__[attribute]) for owner, attribute, _ in PARTS]

    def timing(function: Callable[..., Any], part: str) -> Callable[..., Any]:
        @functools.wraps(function)
        def timed(*args: Any, **kwargs: Any) -> Any:
            if not inside():
                return function(*args, **kwargs)
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                seconds[part].append(time.perf_counter() - start)

        return timed

    try:
        for (owner, attribute, original), (_, _, part) in zip(originals, PARTS, strict=True):
            setattr(owner, attribute, timing(original, part))
        yield
    finally:
        for owner, attribute, original in originals:
            setattr(owner, attribute, original)


class EpochTimer(pl.Callback):
    """Durations of whole epochs, and of the explanation callback's hook in each (wall-clock and CPU
    time of the main thread, which runs everything with one torch thread)."""

    def __init__(self, explanation: ExplanationCallback | None) -> None:
        self.starts: list[float] = []
        self.cpu_starts: list[float] = []
        self.end = self.cpu_end = 0.0
        self.callback_seconds: list[float] = []
        self.callback_cpu_seconds: list[float] = []
        self.inside = False  # within the explanation callback's hook (not in sanity checking)
        self.part_seconds: dict[str, list[float]] = defaultdict(list)
        if explanation is not None:
            hook = explanation.on_validation_epoch_end

            def timed(trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
                explanation.last_run_seconds = None
                start, cpu_start = time.perf_counter(), time.thread_time()
                self.inside = not trainer.sanity_checking
                try:
                    hook(trainer, pl_module)
                finally:
                    self.inside = False
                if trainer.sanity_checking:
                    return
                ran = explanation.last_run_seconds is not None  # 0 for the epochs the callback skips
                self.callback_seconds.append(time.perf_counter() - start if ran else 0.0)
                self.callback_cpu_seconds.append(time.thread_time() - cpu_start if ran else 0.0)

            explanation.on_validation_epoch_end = timed  # type: ignore[method-assign]

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.starts.append(time.perf_counter())
        self.cpu_starts.append(time.thread_time())

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.end = time.perf_counter()
        self.cpu_end = time.thread_time()

    def epoch_seconds(self, cpu: bool = False) -> list[float]:
        boundaries = [*self.cpu_starts, self.cpu_end] if cpu else [*self.starts, self.end]
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


class Timings(NamedTuple):
    """Per timed epoch: its duration and the callback's time in it, wall-clock and CPU."""

    epochs: list[float]
    callback: list[float]
    cpu_epochs: list[float]
    cpu_callback: list[float]
    parts: dict[str, list[float]]  # seconds of each call of each part, the first run's dropped


def shares(epochs: list[float], callback: list[float]) -> list[float]:
    """Callback time over the rest of the same epoch, for the epochs where it ran."""
    return [
        spent / (total - spent) for total, spent in zip(epochs, callback, strict=True) if 0 < spent < total
    ]


def run(
    with_callback: bool,
    epochs: int,
    workdir: Path,
    metrics_every: int | None = None,
    recipe: str = "quickstart",
) -> Timings:
    args = [
        "fit",
        "--config",
        str(recipe_path(recipe)),
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
        raise RuntimeError(f"the {recipe} recipe registers no ExplanationCallback")
    if metrics_every is not None:
        explanation.metrics_every_n_epochs = metrics_every
    if not with_callback:
        trainer.callbacks = [c for c in trainer.callbacks if c is not explanation]
        explanation = None
    timer = EpochTimer(explanation)
    trainer.callbacks.append(timer)
    with timed_parts(timer.part_seconds, lambda: timer.inside):
        trainer.fit(cli.model, cli.datamodule)
    for logger in trainer.loggers:
        finish = getattr(getattr(logger, "experiment", None), "finish", None)
        if callable(finish):
            finish()
    return Timings(
        timer.epoch_seconds(),
        timer.callback_seconds[1:],
        timer.epoch_seconds(cpu=True),
        timer.callback_cpu_seconds[1:],
        {part: calls[1:] for part, calls in timer.part_seconds.items()},
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--recipe", default="quickstart", help="a shipped recipe with the callback")
    parser.add_argument("--epochs", type=int, default=5, help="epochs per run (the first is not timed)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per condition")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    parser.add_argument(
        "--metrics-every",
        type=int,
        default=None,
        help="the callback's metrics_every_n_epochs (default: the recipe's)",
    )
    options = parser.parse_args()
    if options.threads > 0:
        torch.set_num_threads(options.threads)
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    os.environ.setdefault("WANDB_DISABLE_GIT", "true")

    epochs: dict[bool, list[float]] = {False: [], True: []}
    cpu_epochs: dict[bool, list[float]] = {False: [], True: []}
    callback_seconds: list[float] = []
    callback_cpu_seconds: list[float] = []
    paired: list[float] = []
    wall_shares: list[float] = []
    cpu_shares: list[float] = []
    parts: dict[str, list[float]] = defaultdict(list)
    with tempfile.TemporaryDirectory() as directory:
        previous = Path.cwd()
        os.chdir(directory)  # W&B offline runs and logs go to the temporary directory
        try:
            for repeat in range(options.repeats):
                order = (False, True) if repeat % 2 == 0 else (True, False)
                for with_callback in order:
                    timings = run(
                        with_callback, options.epochs, Path(directory), options.metrics_every, options.recipe
                    )
                    epochs[with_callback] += timings.epochs
                    cpu_epochs[with_callback] += timings.cpu_epochs
                    if with_callback:
                        callback_seconds += timings.callback
                        callback_cpu_seconds += timings.cpu_callback
                        paired += paired_differences(timings.epochs, timings.callback)
                        wall_shares += shares(timings.epochs, timings.callback)
                        cpu_shares += shares(timings.cpu_epochs, timings.cpu_callback)
                        for part, calls in timings.parts.items():
                            parts[part] += calls
                    label = "with   " if with_callback else "without"
                    listed = ", ".join(f"{d:.2f}" for d in timings.epochs)
                    print(f"repeat {repeat} {label}: epochs {listed} s")
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
    for name, values in (("wall-clock", wall_shares), ("CPU", cpu_shares)):
        if len(values) > 1:
            print(
                f"callback / rest of its epoch, {name} time: {100 * statistics.median(values):.1f} % "
                f"(median over {len(values)} epochs; 10-90 %: "
                f"{100 * _quantile(values, 0.1):.1f}-{100 * _quantile(values, 0.9):.1f} %)"
            )
    cpu_without = statistics.median(cpu_epochs[False])
    cpu_inside = statistics.fmean(callback_cpu_seconds)
    print(
        f"CPU time of the main thread: {cpu_without:.3f} s per epoch without the callback, "
        f"{cpu_inside:.3f} s in the callback = {100 * cpu_inside / cpu_without:.1f} % (mean)"
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
    for name, share in (("wall-clock", inside / without), ("CPU", cpu_inside / cpu_without)):
        verdict = "meets" if share < TARGET else "misses"
        print(f"target < {100 * TARGET:.0f} % (callback {name} time per epoch, mean): {verdict} it")
    if parts:
        print("where the callback's time goes (median of each call, ms; calls per run):")
        runs = max(1, sum(1 for value in callback_seconds if value > 0))
        for _, _, part in PARTS:
            if parts.get(part):
                calls = parts[part]
                print(f"  {part:20s} {1e3 * statistics.median(calls):7.2f}   ({len(calls) / runs:.1f})")


if __name__ == "__main__":
    main()
