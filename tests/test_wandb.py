"""W&B: summary metrics and the dashboard, checked against a real offline run of the command line.

The run is ``python -m lightning_ot.fit --recipe quickstart`` (tiny: 3 epochs of 4 batches) with the
default W&B logger in offline mode and :class:`WandbSummaryMetrics`, read back from its transaction
log with ``tests/wandb_records.py``.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger

from lightning_ot import OTClassifier
from lightning_ot.data import DigitsDataModule
from lightning_ot.models import LipschitzMLP
from lightning_ot.wandb_dashboard import SWEPT_PARAMETERS, build_workspace, describe
from lightning_ot.wandb_dashboard import main as dashboard_main
from lightning_ot.wandb_summary import WandbSummaryMetrics
from tests import wandb_records

EPOCHS = 3


@pytest.fixture(scope="module")
def offline_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder of a finished offline W&B run of the quickstart recipe."""
    import wandb

    from lightning_ot.fit import main

    root = tmp_path_factory.mktemp("wandb_run")
    threads, cwd = torch.get_num_threads(), Path.cwd()
    environment = {key: os.environ.get(key) for key in ("WANDB_MODE", "WANDB_SILENT", "WANDB_DISABLE_GIT")}
    os.environ.update(WANDB_MODE="offline", WANDB_SILENT="true", WANDB_DISABLE_GIT="true")
    torch.set_num_threads(1)
    os.chdir(root)
    try:
        main(
            [
                "--recipe", "quickstart",
                "--trainer.max_epochs", str(EPOCHS),
                "--trainer.limit_train_batches", "4",
                "--trainer.enable_progress_bar", "false",
                "--trainer.enable_checkpointing", "false",
                "--trainer.logger.init_args.save_dir", str(root),
                "--model.init_args.backbone.init_args.hidden_features", "[32]",
            ]
        )  # fmt: skip
        wandb.finish()
    finally:
        os.chdir(cwd)
        torch.set_num_threads(threads)
        for key, value in environment.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    (run,) = (root / "wandb").glob("offline-run-*")
    return run


def _nested(config: dict[str, Any], dotted: str) -> Any:
    value: Any = config
    for part in dotted.split("."):
        assert isinstance(value, dict), f"{dotted!r}: {part!r} is not under a mapping"
        assert part in value, f"{dotted!r}: no {part!r} in the run's config"
        value = value[part]
    return value


# --------------------------------------------------------------------------------------------------
# Summary metrics
# --------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_summary_keeps_best_accuracy_and_certified_accuracy(offline_run: Path) -> None:
    summary = wandb_records.summary(offline_run)
    rows = wandb_records.history(offline_run)
    for name in ("val/acc", "val/certified_acc@0.1", "val/certified_acc@0.25", "val/certified_acc@0.5"):
        values = [row[name] for row in rows if name in row]
        assert len(values) == EPOCHS, f"{name} logged {len(values)} times"
        assert summary[name]["max"] == pytest.approx(max(values))
        assert summary[name]["last"] == pytest.approx(values[-1])
    losses = [row["val/loss"] for row in rows if "val/loss" in row]
    assert summary["val/loss"]["min"] == pytest.approx(min(losses))
    # A metric that was not declared keeps W&B's default summary: its last value.
    assert not isinstance(summary["train/acc"], dict)
    assert math.isfinite(summary["train/acc"])


@pytest.mark.slow
def test_run_config_is_the_resolved_recipe(offline_run: Path) -> None:
    config = wandb_records.config(offline_run)
    assert _nested(config, "model.class_path") == "lightning_ot.OTClassifier"
    assert _nested(config, "trainer.max_epochs") == EPOCHS
    assert _nested(config, "model.init_args.backbone.init_args.hidden_features") == [32]


def test_without_wandb_logger_the_callback_does_nothing(tmp_path: Path) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        pl.seed_everything(0, verbose=False)
        model = OTClassifier(LipschitzMLP(64, 10, hidden_features=(16,)), num_classes=10)
        trainer = pl.Trainer(
            max_epochs=1,
            limit_train_batches=2,
            logger=CSVLogger(tmp_path),
            callbacks=[WandbSummaryMetrics()],
            enable_progress_bar=False,
            enable_checkpointing=False,
            enable_model_summary=False,
        )
        trainer.fit(model, datamodule=DigitsDataModule(batch_size=32))
    finally:
        torch.set_num_threads(threads)
    assert "val/acc" in trainer.callback_metrics
    assert not (tmp_path / "wandb").exists()


@pytest.mark.parametrize(
    ("summaries", "message"),
    [
        ([("val/acc", ("best",))], "aggregations"),
        ([("val/acc", ())], "aggregations"),
        ([("val/*/acc", ("max",))], "glob"),
        (["val/acc"], "name, aggregations"),
    ],
)
def test_bad_summaries_are_rejected(summaries: list, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        WandbSummaryMetrics(summaries)


def test_globs_are_expanded_from_the_module() -> None:
    model = OTClassifier(LipschitzMLP(64, 10, hidden_features=(8,)), num_classes=10, certified_eps=(0.1, 0.5))
    names = dict(WandbSummaryMetrics()._names(model))
    assert names["val/certified_acc@0.1"] == ("max", "last")
    assert names["val/certified_acc@0.5"] == ("max", "last")
    assert names["val/acc"] == ("max", "last")


# --------------------------------------------------------------------------------------------------
# Dashboard (built, never saved: saving needs the network)
# --------------------------------------------------------------------------------------------------

needs_workspaces = pytest.mark.skipif(
    importlib.util.find_spec("wandb_workspaces") is None,
    reason="needs wandb-workspaces (the dashboard extra)",
)


def _panels(workspace: Any) -> dict[str, list[dict[str, Any]]]:
    return {section["section"]: section["panels"] for section in describe(workspace)}


@needs_workspaces
def test_dashboard_layout() -> None:
    workspace = build_workspace("team", "lightning-ot", certified_eps=(0.1, 0.5))
    assert (workspace.entity, workspace.project, workspace.name) == ("team", "lightning-ot", "lightning-ot")
    panels = _panels(workspace)
    assert list(panels) == ["Accuracy and certificates", "hKR loss", "Explanations", "Sweeps"]
    media = [panel for panel in panels["Explanations"] if panel["type"] == "MediaBrowser"]
    assert [panel["keys"] for panel in media] == [["explain/grid"]]
    explanation_keys = {key for panel in panels["Explanations"] for key in panel["keys"]}
    assert {"explain/mu_fidelity", "explain/deletion", "explain/flip_rate"} <= explanation_keys
    tightness = {panel["title"]: panel["keys"] for panel in panels["Explanations"]}
    assert tightness["gradient norm ||grad f_k|| (1 is tight)"] == [
        "explain/gradient_norm",
        "explain/gradient_norm_p10",
    ]
    assert tightness["boundary distance / certified radius (1 is tight)"] == ["explain/tightness"]
    assert not any("flip_rate@" in key for key in explanation_keys)  # no steps asked for
    certified = next(panel for panel in panels["Accuracy and certificates"] if "certified" in panel["title"])
    assert certified["keys"] == ["val/certified_acc@0.1", "val/certified_acc@0.5"]
    sweep_keys = {key for panel in panels["Sweeps"] for key in panel["keys"]}
    assert set(SWEPT_PARAMETERS) | {"val/acc.max"} <= sweep_keys
    # The view serializes to what would be sent to W&B, without contacting it.
    serialized = workspace._to_model().model_dump_json()
    assert "explain/grid" in serialized
    assert "val/certified_acc@0.5" in serialized


@needs_workspaces
def test_dashboard_plots_the_flip_rates_of_the_steps_asked_for() -> None:
    panels = _panels(build_workspace("team", "p", flip_steps=(1.1, 1.2)))["Explanations"]
    by_step = [panel for panel in panels if panel["title"].startswith("transport flip rate by step")]
    assert [panel["keys"] for panel in by_step] == [["explain/flip_rate@1.1", "explain/flip_rate@1.2"]]
    with pytest.raises(ValueError, match="flip_steps"):
        build_workspace("team", "p", flip_steps=(-1.0,))


@needs_workspaces
def test_dashboard_custom_prefix_and_media_keys() -> None:
    workspace = build_workspace("team", "p", explanation_prefix="xai/", media_keys=["xai/grid", "xai/extra"])
    explanations = _panels(workspace)["Explanations"]
    assert explanations[0]["keys"] == ["xai/grid", "xai/extra"]
    assert "xai/mu_fidelity" in explanations[1]["keys"] + explanations[3]["keys"]


@needs_workspaces
@pytest.mark.parametrize(("arguments", "message"), [(("", "p"), "entity"), (("e", " "), "project")])
def test_dashboard_rejects_bad_arguments(arguments: tuple[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_workspace(*arguments)
    with pytest.raises(ValueError, match="certified_eps"):
        build_workspace("e", "p", certified_eps=())


@needs_workspaces
def test_dashboard_command_line_dry_run(capsys: pytest.CaptureFixture[str]) -> None:
    dashboard_main(["--entity", "team", "--project", "p", "--certified-eps", "0.2", "--dry-run"])
    printed = json.loads(capsys.readouterr().out)
    assert printed[0]["section"] == "Accuracy and certificates"
    assert ["val/certified_acc@0.2"] in [panel["keys"] for panel in printed[0]["panels"]]


@needs_workspaces
@pytest.mark.slow
def test_dashboard_shows_what_a_run_logs(offline_run: Path) -> None:
    """Every metric panel of the accuracy and loss sections plots a key that a real run logs, and every
    swept parameter is a key of the run's config."""
    rows = wandb_records.history(offline_run)
    logged = {key for row in rows for key in row}
    logged |= {key.removesuffix("/_type") for key in logged}  # media are logged as KEY/_type, KEY/...
    panels = _panels(build_workspace("team", "lightning-ot"))
    # The recipe's ExplanationCallback logs the grid as an image under the media browser's key.
    (media,) = [panel for panel in panels["Explanations"] if panel["type"] == "MediaBrowser"]
    for key in media["keys"]:
        kinds = [row[f"{key}/_type"] for row in rows if f"{key}/_type" in row]
        assert kinds, f"no {key!r} logged"
        assert set(kinds) == {"images/separated"}
    for section in ("Accuracy and certificates", "hKR loss", "Explanations"):
        for panel in panels[section]:
            if panel["type"] in ("LinePlot", "MediaBrowser"):
                assert set(panel["keys"]) <= logged, (panel["title"], set(panel["keys"]) - logged)
            else:  # summary ("....max") of a logged metric
                assert all(key.removesuffix(".max") in logged for key in panel["keys"])
    config = wandb_records.config(offline_run)
    for key in SWEPT_PARAMETERS:
        _nested(config, key)
