"""Quickstart training time with 1 and 2 torch threads, on idle cores and with a background CPU load.

    python benchmarks/threads.py [--epochs 4] [--repeats 2] [--load-processes N]

Each run trains the quickstart recipe (its ExplanationCallback included, no logger, no checkpoint)
for ``--epochs`` epochs in a fresh process with ``--num_threads 1`` or ``2`` and times ``trainer.fit``
(imports excluded). The background load is ``--load-processes`` busy Python loops (default: one per
CPU core) that this script starts before and stops after each loaded run. Runs are interleaved
(idle/loaded x 1/2 threads in each repeat); printed: the median fit time of each condition and the
ratios 2 threads / 1 thread, loaded / idle, and the quickstart's 40 epochs scaled from the medians.
The machine may be shared: "idle" means without this script's load; read ratios, not absolute times.
"""

from __future__ import annotations

import argparse
import itertools
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
QUICKSTART_EPOCHS = 40


def _busy_loop() -> None:
    while True:
        pass


def _worker(threads: int, epochs: int) -> None:
    sys.path.insert(0, str(REPO_ROOT))
    import lightning.pytorch as pl
    import torch

    from lightning_ot.fit import OTLightningCLI
    from lightning_ot.module import OTClassifier
    from lightning_ot.recipes import recipe_path

    arguments = [
        "--config",
        str(recipe_path("quickstart")),
        "--trainer.max_epochs",
        str(epochs),
        "--trainer.logger",
        "false",
        "--trainer.enable_checkpointing",
        "false",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.enable_model_summary",
        "false",
        "--num_threads",
        str(threads),
    ]
    cli = OTLightningCLI(OTClassifier, pl.LightningDataModule, run=False, args=arguments)
    assert torch.get_num_threads() == threads
    start = time.perf_counter()
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    print(f"FIT_SECONDS {time.perf_counter() - start:.3f}")


def _run(threads: int, epochs: int, load_processes: int) -> float:
    load = [multiprocessing.Process(target=_busy_loop, daemon=True) for _ in range(load_processes)]
    for process in load:
        process.start()
    try:
        environment = {key: value for key, value in os.environ.items() if key not in ("OMP_NUM_THREADS",)}
        environment["WANDB_MODE"] = "disabled"
        with tempfile.TemporaryDirectory() as folder:  # the explanation callback writes its PNGs there
            result = subprocess.run(
                [
                    sys.executable,
                    str(Path(__file__).resolve()),
                    "--worker",
                    str(threads),
                    "--epochs",
                    str(epochs),
                ],
                cwd=folder,
                capture_output=True,
                text=True,
                env=environment,
                check=False,
            )
    finally:
        for process in load:
            process.terminate()
            process.join()
    if result.returncode != 0:
        raise RuntimeError(result.stderr[-3000:])
    (line,) = [line for line in result.stdout.splitlines() if line.startswith("FIT_SECONDS")]
    return float(line.split()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--load-processes", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.worker is not None:
        _worker(options.worker, options.epochs)
        return
    times: dict[tuple[str, int], list[float]] = {}
    for repeat in range(options.repeats):
        conditions = list(itertools.product(("idle", "loaded"), (1, 2)))
        if repeat % 2:
            conditions.reverse()
        for load, threads in conditions:
            seconds = _run(threads, options.epochs, options.load_processes if load == "loaded" else 0)
            times.setdefault((load, threads), []).append(seconds)
            print(f"repeat {repeat}: {load:6s} {threads} thread(s): {seconds:7.2f} s", flush=True)
    median = {key: statistics.median(values) for key, values in times.items()}
    print(f"\nquickstart, {options.epochs} epochs, load = {options.load_processes} busy processes")
    print("condition          median fit   scaled to 40 epochs")
    for (load, threads), seconds in sorted(median.items()):
        scaled = seconds * QUICKSTART_EPOCHS / options.epochs
        print(f"{load:6s} {threads} thread(s)  {seconds:8.2f} s   {scaled:8.1f} s")
    for load in ("idle", "loaded"):
        print(f"{load}: 2 threads / 1 thread = {median[(load, 2)] / median[(load, 1)]:.2f}")
    for threads in (1, 2):
        print(
            f"{threads} thread(s): loaded / idle = {median[('loaded', threads)] / median[('idle', threads)]:.2f}"
        )


if __name__ == "__main__":
    main()
