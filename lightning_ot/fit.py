"""Command line: ``python -m lightning_ot.fit --recipe NAME [LightningCLI overrides]``.

A recipe is a LightningCLI config (``recipes/NAME.yaml``); every other argument overrides it, e.g.
``--trainer.max_epochs 2`` or ``--model.init_args.certified_eps [0.1,0.5]``. Without ``--recipe`` this
is a plain LightningCLI (``--config``, ``--model``, ``--data`` ...). The first argument may name another
LightningCLI subcommand (``validate``, ``test``, ``predict``); the default is ``fit``.

Runs log to Weights & Biases in offline mode by default (a run under ``./wandb`` that ``wandb sync``
uploads later); pass ``--trainer.logger.init_args.offline false`` to log online, or
``--trainer.logger false`` for no logger.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import yaml
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import WandbLogger

from lightning_ot.module import OTClassifier
from lightning_ot.recipes import RecipeNotFoundError, available_recipes, recipe_path

__all__ = ["OTLightningCLI", "SaveConfigToLoggers", "format_summary", "main"]

SUBCOMMANDS = ("fit", "validate", "test", "predict")
DEFAULT_LOGGER: dict[str, Any] = {
    "class_path": "lightning.pytorch.loggers.WandbLogger",
    "init_args": {"project": "lightning-ot", "offline": True, "save_dir": "."},
}


class SaveConfigToLoggers(SaveConfigCallback):
    """Save the resolved config next to each logger's files and into the W&B run's config.

    W&B: the config becomes the run's config (searchable, comparable in the dashboard) and
    ``lightning_config.yaml`` among the run's files; other loggers: ``config.yaml`` in their log
    directory; no logger: ``config.yaml`` in the trainer's root directory.
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
        if not trainer.loggers:
            paths.append(Path(trainer.default_root_dir) / self.config_filename)
        for path in paths:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)


class OTLightningCLI(LightningCLI):
    """LightningCLI with this project's defaults: W&B offline logging and config saved to the loggers."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("save_config_callback", SaveConfigToLoggers)
        kwargs.setdefault("subclass_mode_model", True)
        kwargs.setdefault("subclass_mode_data", True)
        kwargs.setdefault("trainer_defaults", {"logger": DEFAULT_LOGGER})
        super().__init__(*args, **kwargs)


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
            if index + 1 >= len(argv):
                raise SystemExit(
                    "error: --recipe needs a name; available recipes: " + ", ".join(available_recipes())
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


def main(args: list[str] | None = None) -> OTLightningCLI:
    """Run the command line with ``args`` (default ``sys.argv[1:]``) and return the CLI object."""
    argv = list(sys.argv[1:] if args is None else args)
    recipe, argv = _split_recipe(argv)
    subcommand = argv.pop(0) if argv and argv[0] in SUBCOMMANDS else "fit"
    if recipe is not None:
        try:
            argv = ["--config", str(recipe_path(recipe)), *argv]
        except RecipeNotFoundError as error:
            print(f"error: {error}", file=sys.stderr)
            raise SystemExit(2) from error
    cli = OTLightningCLI(OTClassifier, pl.LightningDataModule, args=[subcommand, *argv])
    if subcommand == "fit" and cli.trainer.is_global_zero:
        summary = format_summary(dict(cli.trainer.callback_metrics))
        if summary:
            print(summary)
    return cli


if __name__ == "__main__":
    main()
