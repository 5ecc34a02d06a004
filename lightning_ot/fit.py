"""Command line: ``python -m lightning_ot.fit --recipe NAME [LightningCLI overrides]``.

A recipe is a LightningCLI config (``recipes/NAME.yaml``); every other argument overrides it, e.g.
``--trainer.max_epochs 2`` or ``--model.init_args.certified_eps [0.1,0.5]``. Without ``--recipe`` this
is a plain LightningCLI (``--config``, ``--model``, ``--data`` ...). The first argument may name another
LightningCLI subcommand (``validate``, ``test``, ``predict``); the default is ``fit``.
``python -m lightning_ot SUBCOMMAND ...`` is the same command with the subcommand required.

A configuration that cannot be built (a bad argument value, a missing data folder) ends with the
project's message and exit code 2; ``--traceback`` (or ``LIGHTNING_OT_TRACEBACK=1``) shows the full
traceback instead. ``--num_threads`` sets torch's CPU threads (default ``auto``, see
:mod:`lightning_ot.threads`); ``predict`` writes ``predictions.csv`` (see
:class:`~lightning_ot.predictions.CertifiedPredictionWriter`).

Runs log to Weights & Biases in offline mode by default (a run under ``./wandb`` that ``wandb sync``
uploads later); pass ``--trainer.logger.init_args.offline false`` to log online, or
``--trainer.logger false`` for no logger.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import torch
import yaml
from lightning.pytorch.accelerators import CPUAccelerator
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_info

from lightning_ot.module import OTClassifier
from lightning_ot.predictions import CertifiedPredictionWriter
from lightning_ot.recipes import RecipeNotFoundError, available_recipes, recipe_path
from lightning_ot.threads import choose_num_threads
from lightning_ot.wandb_summary import WandbSummaryMetrics

__all__ = [
    "CommandLineError",
    "ConfigurationError",
    "OTLightningCLI",
    "SaveConfigToLoggers",
    "format_summary",
    "main",
]

SUBCOMMANDS = ("fit", "validate", "test", "predict")
TRACEBACK_VARIABLE = "LIGHTNING_OT_TRACEBACK"
DEFAULT_LOGGER: dict[str, Any] = {
    "class_path": "lightning.pytorch.loggers.WandbLogger",
    "init_args": {"project": "lightning-ot", "offline": True, "save_dir": "."},
}


class CommandLineError(Exception):
    """A mistake on the command line: ``main`` prints the message and exits with code 2."""


class ConfigurationError(CommandLineError):
    """The configuration parsed but its classes could not be built; the message is the root cause's.

    jsonargparse wraps an error raised by a class's ``__init__`` (for instance a loss refusing
    ``margin=0``) into union-validation errors that repeat the whole configuration; this keeps the
    innermost error, the one that says what is wrong, as :attr:`cause`.
    """

    def __init__(self, error: BaseException) -> None:
        self.cause = _root_cause(error)
        message = str(self.cause)
        if not isinstance(self.cause, ValueError | OSError | LookupError):
            message = f"{type(self.cause).__name__}: {message}"
        super().__init__(message)


def _root_cause(error: BaseException) -> BaseException:
    seen = {id(error)}
    while True:
        cause = error.__cause__ or (None if error.__suppress_context__ else error.__context__)
        if cause is None or id(cause) in seen:
            return error
        seen.add(id(cause))
        error = cause


class SaveConfigToLoggers(SaveConfigCallback):
    """Save the resolved config next to each logger's files and into the W&B run's config.

    W&B: the config becomes the run's config (searchable, comparable in the dashboard) and
    ``lightning_config.yaml`` among the run's files; other loggers: ``config.yaml`` in their log
    directory; no logger with a folder: ``config.yaml`` in the trainer's root directory.
    """

    def __init__(self, parser: Any, config: Any, **kwargs: Any) -> None:
        kwargs["save_to_log_dir"] = False
        super().__init__(parser, config, **kwargs)

    def save_config(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        text = self.parser.dump(self.config, skip_none=False)
        paths: list[Path] = []
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.experiment.config.update(yaml.safe_load(text), allow_val_change=True)
                # W&B writes its own config.yaml into the run's files.
                paths.append(Path(logger.experiment.dir) / "lightning_config.yaml")
            elif logger.log_dir is not None:
                paths.append(Path(logger.log_dir) / self.config_filename)
        if not paths:  # no logger, or none with a folder (fast_dev_run's dummy logger)
            paths.append(Path(trainer.default_root_dir) / self.config_filename)
        for path in paths:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)


class OTLightningCLI(LightningCLI):
    """LightningCLI with this project's defaults: W&B offline logging, the config saved to the loggers,
    and W&B summary metrics (best accuracy and certified accuracy) declared for every run
    (``--wandb_summary.summaries`` changes them; the callback does nothing without a W&B logger)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("save_config_callback", SaveConfigToLoggers)
        kwargs.setdefault("subclass_mode_model", True)
        kwargs.setdefault("subclass_mode_data", True)
        kwargs.setdefault("trainer_defaults", {"logger": DEFAULT_LOGGER})
        # OTClassifier takes its optimizer and scheduler as arguments (`--model.init_args.optimizer`).
        kwargs.setdefault("auto_configure_optimizers", False)
        super().__init__(*args, **kwargs)

    def add_arguments_to_parser(self, parser: Any) -> None:
        parser.add_lightning_class_args(WandbSummaryMetrics, "wandb_summary")
        parser.add_argument(
            "--num_threads",
            type=int | Literal["auto"],
            default="auto",
            help="torch CPU threads: an integer, or 'auto' (one for a model under 1M parameters on the "
            "CPU; OMP_NUM_THREADS wins when set; see lightning_ot.threads)",
        )

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except Exception as error:  # any failure to build the configured classes
            raise ConfigurationError(error) from error
        self._apply_thread_policy()

    def _apply_thread_policy(self) -> None:
        config = self.config.get(str(self.subcommand), self.config) if self.subcommand else self.config
        trainer = self.trainer
        on_cpu = isinstance(trainer.accelerator, CPUAccelerator)
        processes = trainer.num_devices if on_cpu else 1
        try:
            threads, reason = choose_num_threads(
                config.get("num_threads", "auto"), self.model, on_cpu, processes
            )
        except ValueError as error:
            raise ConfigurationError(error) from error
        if threads is not None:
            torch.set_num_threads(threads)
        rank_zero_info(f"torch CPU threads: {torch.get_num_threads()} ({reason}; --num_threads N to change)")

    def instantiate_trainer(self, **kwargs: Any) -> pl.Trainer:
        trainer = super().instantiate_trainer(**kwargs)
        if self.subcommand == "predict" and not any(
            isinstance(callback, BasePredictionWriter) for callback in trainer.callbacks
        ):
            trainer.callbacks.append(CertifiedPredictionWriter())
        return trainer


def format_summary(metrics: dict[str, Any]) -> str:
    """Human-readable summary of the final validation metrics (accuracy and certified accuracy)."""
    lines = []
    if "val/acc" in metrics:
        lines.append(f"validation accuracy: {100 * float(metrics['val/acc']):.2f} %")
    certified = sorted(
        (float(name.split("@", 1)[1]), float(value))
        for name, value in metrics.items()
        if name.startswith("val/certified_acc@")
    )
    if certified:
        lines.append("certified robust accuracy (L2 radius eps):")
        lines += [f"  eps = {eps:<6g} {100 * value:6.2f} %" for eps, value in certified]
    return "\n".join(lines)


def _split_recipe(argv: list[str]) -> tuple[str | None, list[str]]:
    rest: list[str] = []
    recipe = None
    index = 0
    while index < len(argv):
        argument = argv[index]
        if argument == "--recipe":
            if index + 1 >= len(argv) or argv[index + 1].startswith("-"):
                raise CommandLineError(
                    "--recipe needs a name; available recipes: " + ", ".join(available_recipes())
                )
            recipe = argv[index + 1]
            index += 2
            continue
        if argument.startswith("--recipe="):
            recipe = argument.split("=", 1)[1]
        else:
            rest.append(argument)
        index += 1
    return recipe, rest


@contextlib.contextmanager
def _command_line(arguments: list[str]) -> Iterator[None]:
    """``sys.argv`` holding ``arguments``, so LightningCLI reads them as the command line it is given
    (passing them as ``args=`` while ``sys.argv`` holds the originals makes Lightning warn)."""
    original = sys.argv
    sys.argv = [original[0] if original else "lightning_ot", *arguments]
    try:
        yield
    finally:
        sys.argv = original


def main(
    args: list[str] | None = None,
    default_subcommand: str | None = "fit",
    prog: str = "python -m lightning_ot.fit",
) -> OTLightningCLI:
    """Run the command line with ``args`` (default ``sys.argv[1:]``) and return the CLI object.

    ``default_subcommand``: the subcommand run when the first argument names none (``None``: the first
    argument must name one, as ``python -m lightning_ot`` requires); ``prog``: the command's name in
    the usage message. Mistakes (a bad value, a missing
    data folder, an unknown recipe) print ``error: ...`` and exit with code 2, or raise with their
    traceback under ``--traceback`` / ``LIGHTNING_OT_TRACEBACK=1``.
    """
    argv = list(sys.argv[1:] if args is None else args)
    show_traceback = "--traceback" in argv or os.environ.get(TRACEBACK_VARIABLE, "") not in ("", "0")
    argv = [argument for argument in argv if argument != "--traceback"]
    try:
        cli, subcommand = _run(argv, default_subcommand, prog, from_command_line=args is None)
    except CommandLineError as error:
        if show_traceback:
            raise
        heading = (
            "error: "
            if not isinstance(error, ConfigurationError)
            else ("error: the configuration could not be built (--traceback shows where):\n")
        )
        print(f"{heading}{error}", file=sys.stderr)
        raise SystemExit(2) from None
    if subcommand == "fit" and cli.trainer.is_global_zero:
        summary = format_summary(dict(cli.trainer.callback_metrics))
        if summary:
            print(summary)
    return cli


def _run(
    argv: list[str], default_subcommand: str | None, prog: str, from_command_line: bool
) -> tuple[OTLightningCLI, str | None]:
    recipe, argv = _split_recipe(argv)
    if argv and argv[0] in SUBCOMMANDS:
        subcommand: str | None = argv.pop(0)
    else:
        subcommand = default_subcommand
    if recipe is not None:
        try:
            argv = ["--config", str(recipe_path(recipe)), *argv]
        except RecipeNotFoundError as error:
            raise CommandLineError(str(error.args[0])) from error
    arguments = [subcommand, *argv] if subcommand is not None else argv
    options: dict[str, Any] = {"parser_kwargs": {"prog": prog}}
    if from_command_line:
        with _command_line(arguments):
            return OTLightningCLI(OTClassifier, pl.LightningDataModule, **options), subcommand
    return OTLightningCLI(OTClassifier, pl.LightningDataModule, args=arguments, **options), subcommand


if __name__ == "__main__":
    main()
