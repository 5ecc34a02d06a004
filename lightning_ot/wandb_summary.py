"""Summary metrics of W&B runs: the best validation accuracy and certified accuracy of a run.

By default W&B keeps the *last* value of each metric in a run's summary, which is what the runs table,
sweeps and parallel-coordinates plots show. For a classifier the useful figure is the *best* one:
:class:`WandbSummaryMetrics` declares it with ``wandb.Run.define_metric`` when the run starts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import WandbLogger

__all__ = ["DEFAULT_SUMMARIES", "WandbSummaryMetrics"]

Aggregation = Literal["min", "max", "mean", "last", "first", "none"]

#: (metric name or glob ending in ``*``, aggregations kept in the summary)
DEFAULT_SUMMARIES: tuple[tuple[str, tuple[Aggregation, ...]], ...] = (
    ("val/acc", ("max", "last")),
    ("val/certified_acc@*", ("max", "last")),
    ("val/loss", ("min", "last")),
)

_AGGREGATIONS = {"min", "max", "mean", "last", "first", "none"}


class WandbSummaryMetrics(Callback):
    """Declare the summary aggregations of W&B metrics (best accuracy, best certified accuracy, ...).

    For every :class:`~lightning.pytorch.loggers.WandbLogger` of the trainer, calls
    ``run.define_metric(name, summary=..., step_metric="trainer/global_step")`` at setup, on the main
    process only. W&B aggregates no summary for a glob, so names ending in ``*`` are expanded at setup
    from the module's ``certified_eps`` and the validation metrics of :class:`~lightning_ot.OTClassifier`;
    any other metric matching a glob is declared when it first appears, and aggregated from the next
    validation on. With the defaults the run's summary holds, for ``val/acc`` and each
    ``val/certified_acc@EPS``, ``{"max": best value, "last": last value}``, and for ``val/loss`` its
    minimum and last value. Trainers without a W&B logger are left alone.

    Args:
        summaries: pairs ``(name, aggregations)``; ``name`` may end in ``*`` to match every metric with
            that prefix; aggregations among ``"min"``, ``"max"``, ``"mean"``, ``"last"``, ``"first"``,
            ``"none"``.

    Example:
        >>> callback = WandbSummaryMetrics([("val/acc", ("max",))])
        >>> callback.summaries
        (('val/acc', ('max',)),)
    """

    def __init__(self, summaries: Sequence[tuple[str, Sequence[Aggregation]]] = DEFAULT_SUMMARIES) -> None:
        super().__init__()
        checked = []
        for entry in summaries:
            if not (isinstance(entry, Sequence) and len(entry) == 2 and isinstance(entry[0], str)):
                raise ValueError(f"each entry of `summaries` must be (name, aggregations), got {entry!r}")
            name, aggregations = entry
            if isinstance(aggregations, str):
                aggregations = (aggregations,)
            unknown = set(aggregations) - _AGGREGATIONS
            if not aggregations or unknown:
                raise ValueError(
                    f"aggregations of {name!r} must be a non-empty subset of {sorted(_AGGREGATIONS)}, "
                    f"got {list(aggregations)}"
                )
            if "*" in name[:-1]:
                raise ValueError(f"a glob in `summaries` may only end in '*', got {name!r}")
            checked.append((name, tuple(aggregations)))
        self.summaries = tuple(checked)
        self._defined: set[str] = set()

    def _names(self, pl_module: pl.LightningModule) -> list[tuple[str, tuple[Aggregation, ...]]]:
        """Summaries with globs expanded: W&B keeps no summary aggregation for a glob name."""
        known = [f"val/certified_acc@{eps:g}" for eps in getattr(pl_module, "certified_eps", ())]
        known += [f"val/{name}" for name in ("acc", "loss", "kr", "hinge")]
        expanded = []
        for name, aggregations in self.summaries:
            if name.endswith("*"):
                expanded += [(match, aggregations) for match in known if match.startswith(name[:-1])]
            else:
                expanded.append((name, aggregations))
        return expanded

    def _define(self, trainer: pl.Trainer, names: list[tuple[str, tuple[Aggregation, ...]]]) -> None:
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                run = logger.experiment
                for name, aggregations in names:
                    # W&B reads "." in a metric name as nesting: "val/certified_acc@0.1" needs escaping.
                    run.define_metric(
                        name.replace(".", "\\."),
                        summary=",".join(aggregations),
                        step_metric="trainer/global_step",
                    )
        self._defined.update(name for name, _ in names)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._defined = set()
        if trainer.is_global_zero:
            self._define(trainer, self._names(pl_module))

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Metrics matching a glob that were not known at setup: declared from their second epoch on.
        if not trainer.is_global_zero:
            return
        late = [
            (metric, aggregations)
            for name, aggregations in self.summaries
            if name.endswith("*")
            for metric in trainer.callback_metrics
            if metric.startswith(name[:-1]) and metric not in self._defined
        ]
        if late:
            self._define(trainer, late)
