"""Lay out a W&B dashboard (a saved workspace view) for lightning-ot runs.

    python -m lightning_ot.wandb_dashboard --entity ENTITY --project PROJECT [--name NAME]

needs ``pip install wandb-workspaces`` and a logged-in W&B client (``wandb login``). The view has:

- *Accuracy and certificates*: validation and training accuracy, certified robust accuracy at each
  radius, and the best values of the runs as scalars;
- *hKR loss*: the loss and its KR and hinge terms, training and validation;
- *Explanations*: the saliency / counterfactual grids that the ``ExplanationCallback`` logs
  (``explain/grid``) in a media browser, with the explanation metrics (Deletion, Insertion,
  MuFidelity, stability, sparseness), the transport flip rates (at the largest step and at each of
  ``--flip-steps``) and the tightness figures: the input-gradient norm (median, 10th percentile)
  and the boundary distance over the certified radius;
- *Sweeps*: a parallel-coordinates plot of the loss and optimizer hyper-parameters against the best
  validation accuracy, and their importance.

``--dry-run`` builds the view and prints its panels without contacting W&B.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

__all__ = ["SWEPT_PARAMETERS", "TIGHTNESS_PANELS", "build_workspace", "describe", "main"]

#: Config keys (as :class:`~lightning_ot.fit.SaveConfigToLoggers` writes them) shown in the sweep panels.
SWEPT_PARAMETERS: tuple[str, ...] = (
    "model.init_args.loss.init_args.margin",
    "model.init_args.loss.init_args.hinge_weight",
    "model.init_args.loss.init_args.temperature",
    "model.init_args.optimizer.init_args.lr",
    "data.init_args.batch_size",
)

EXPLANATION_METRICS: tuple[str, ...] = ("deletion", "insertion", "mu_fidelity", "stability", "sparseness")
TRANSPORT_METRICS: tuple[str, ...] = ("flip_rate", "boundary_reached")
#: Panels of the tightness figures, each with the keys it plots (under the explanation prefix).
TIGHTNESS_PANELS: dict[str, tuple[str, ...]] = {
    "gradient norm ||grad f_k|| (1 is tight)": ("gradient_norm", "gradient_norm_p10"),
    "boundary distance / certified radius (1 is tight)": ("tightness",),
}


def _import_workspaces() -> tuple[Any, Any]:
    try:
        import wandb_workspaces.reports.v2 as reports
        import wandb_workspaces.workspaces as workspaces
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the dashboard needs the wandb-workspaces package: pip install wandb-workspaces"
        ) from error
    return workspaces, reports


def build_workspace(
    entity: str,
    project: str,
    name: str = "lightning-ot",
    certified_eps: Sequence[float] = (0.1, 0.25, 0.5),
    explanation_prefix: str = "explain",
    media_keys: Sequence[str] | None = None,
    swept_parameters: Sequence[str] = SWEPT_PARAMETERS,
    flip_steps: Sequence[float] = (),
) -> Any:
    """The dashboard as a ``wandb_workspaces.workspaces.Workspace`` (not saved: call ``.save()``).

    Args:
        entity: W&B entity (user or team).
        project: W&B project the runs log to (``lightning-ot`` by default in the recipes).
        name: name of the saved view.
        certified_eps: radii whose certified accuracy is plotted (the recipe's ``certified_eps``).
        explanation_prefix: the ``prefix`` of the explanation callback.
        media_keys: image keys shown in the media browser; default ``[f"{explanation_prefix}/grid"]``.
        swept_parameters: config keys shown against the best validation accuracy.
        flip_steps: step sizes of the callback whose flip rates ``flip_rate@{t}`` share one panel
            (how straight the transports are; e.g. ``(1.1, 1.2)`` with the ``mnist5k_08`` recipe).

    Example:
        >>> workspace = build_workspace("my-team", "lightning-ot")  # doctest: +SKIP
        >>> [section.name for section in workspace.sections]  # doctest: +SKIP
        ['Accuracy and certificates', 'hKR loss', 'Explanations', 'Sweeps']
    """
    for argument, value in (("entity", entity), ("project", project), ("name", name)):
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"`{argument}` must be a non-empty string, got {value!r}")
    if not certified_eps or any(eps < 0 for eps in certified_eps):
        raise ValueError(f"`certified_eps` must be a non-empty list of radii >= 0, got {list(certified_eps)}")
    if any(step < 0 for step in flip_steps):
        raise ValueError(f"`flip_steps` must be step sizes >= 0, got {list(flip_steps)}")
    workspaces, reports = _import_workspaces()
    prefix = explanation_prefix.rstrip("/")
    media = list(media_keys) if media_keys is not None else [f"{prefix}/grid"]
    certified = [f"val/certified_acc@{eps:g}" for eps in certified_eps]

    accuracy = workspaces.Section(
        name="Accuracy and certificates",
        is_open=True,
        panels=[
            reports.LinePlot(title="accuracy", x="trainer/global_step", y=["val/acc", "train/acc"]),
            reports.LinePlot(title="certified robust accuracy (L2)", x="trainer/global_step", y=certified),
            reports.ScalarChart(
                title="best validation accuracy", metric=reports.SummaryMetric("val/acc.max")
            ),
            *[
                reports.ScalarChart(title=f"best {key}", metric=reports.SummaryMetric(f"{key}.max"))
                for key in certified
            ],
        ],
    )
    loss = workspaces.Section(
        name="hKR loss",
        is_open=True,
        panels=[
            reports.LinePlot(title="loss", x="trainer/global_step", y=["train/loss_epoch", "val/loss"]),
            reports.LinePlot(
                title="KR term (W1 estimate)", x="trainer/global_step", y=["train/kr_epoch", "val/kr"]
            ),
            reports.LinePlot(
                title="hinge term", x="trainer/global_step", y=["train/hinge_epoch", "val/hinge"]
            ),
        ],
    )
    flip_rates_by_step = []
    if flip_steps:
        flip_rates_by_step.append(
            reports.LinePlot(
                title="transport flip rate by step (multiples of the boundary distance)",
                x="trainer/global_step",
                y=[f"{prefix}/flip_rate@{step:g}" for step in flip_steps],
            )
        )
    explanations = workspaces.Section(
        name="Explanations",
        is_open=True,
        panels=[
            reports.MediaBrowser(
                title="saliency and counterfactual transports", media_keys=media, num_columns=1
            ),
            *[
                reports.LinePlot(title=metric, x="trainer/global_step", y=[f"{prefix}/{metric}"])
                for metric in EXPLANATION_METRICS + TRANSPORT_METRICS
            ],
            *[
                reports.LinePlot(title=title, x="trainer/global_step", y=[f"{prefix}/{key}" for key in keys])
                for title, keys in TIGHTNESS_PANELS.items()
            ],
            *flip_rates_by_step,
        ],
    )
    sweeps = workspaces.Section(
        name="Sweeps",
        is_open=False,
        panels=[
            reports.ParallelCoordinatesPlot(
                title="hyper-parameters against the best validation accuracy",
                columns=[
                    *[
                        reports.ParallelCoordinatesPlotColumn(metric=reports.Config(key))
                        for key in swept_parameters
                    ],
                    reports.ParallelCoordinatesPlotColumn(metric=reports.SummaryMetric("val/acc.max")),
                ],
            ),
            reports.ParameterImportancePlot(with_respect_to="val/acc.max"),
        ],
    )
    return workspaces.Workspace(
        entity=entity, project=project, name=name, sections=[accuracy, loss, explanations, sweeps]
    )


def _panel_keys(panel: Any) -> list[str]:
    keys: list[str] = []
    for attribute in ("y", "media_keys"):
        keys += [str(getattr(item, "name", item)) for item in getattr(panel, attribute, None) or []]
    metric = getattr(panel, "metric", None)
    if metric:
        keys.append(str(getattr(metric, "name", metric)))
    for column in getattr(panel, "columns", None) or []:
        keys.append(str(getattr(column.metric, "name", column.metric)))
    if getattr(panel, "with_respect_to", None):
        keys.append(panel.with_respect_to)
    return keys


def describe(workspace: Any) -> list[dict[str, Any]]:
    """Sections, panels and the metric keys each panel shows, as plain data (for printing and tests)."""
    return [
        {
            "section": section.name,
            "panels": [
                {
                    "type": type(panel).__name__,
                    "title": getattr(panel, "title", None),
                    "keys": _panel_keys(panel),
                }
                for panel in section.panels
            ],
        }
        for section in workspace.sections
    ]


def main(args: Sequence[str] | None = None) -> Any:
    """Command line: build the dashboard and save it to W&B (or print it with ``--dry-run``)."""
    parser = argparse.ArgumentParser(
        prog="python -m lightning_ot.wandb_dashboard",
        description="Lay out a W&B dashboard (a saved workspace view) for lightning-ot runs.",
    )
    parser.add_argument("--entity", required=True, help="W&B entity (user or team)")
    parser.add_argument("--project", required=True, help="W&B project of the runs")
    parser.add_argument("--name", default="lightning-ot", help="name of the saved view")
    parser.add_argument(
        "--certified-eps", type=float, nargs="+", default=[0.1, 0.25, 0.5], help="radii of certified accuracy"
    )
    parser.add_argument("--explanation-prefix", default="explain", help="prefix of the explanation callback")
    parser.add_argument("--media-keys", nargs="+", default=None, help="image keys of the media browser")
    parser.add_argument(
        "--flip-steps", type=float, nargs="+", default=[], help="step sizes whose flip rates are plotted"
    )
    parser.add_argument("--dry-run", action="store_true", help="print the panels, do not contact W&B")
    options = parser.parse_args(args)
    try:
        workspace = build_workspace(
            options.entity,
            options.project,
            options.name,
            certified_eps=options.certified_eps,
            explanation_prefix=options.explanation_prefix,
            media_keys=options.media_keys,
            flip_steps=options.flip_steps,
        )
    except (ValueError, ImportError) as error:
        parser.exit(2, f"error: {error}\n")
    if options.dry_run:
        json.dump(describe(workspace), sys.stdout, indent=2)
        print()
        return workspace
    workspace.save()
    print(f"saved the dashboard: {workspace.url}")
    return workspace


if __name__ == "__main__":
    main()
