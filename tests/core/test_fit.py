"""``python -m lightning_ot.fit``: recipes, overrides, errors, and a real run logged to W&B offline."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from lightning_ot.fit import format_summary, main
from lightning_ot.recipes import RecipeNotFoundError, available_recipes, recipe_path
from tests import wandb_records
from tests.conftest import REPO_ROOT, run_module


def test_recipes_are_found_from_the_checkout() -> None:
    assert "quickstart" in available_recipes()
    assert recipe_path("quickstart") == REPO_ROOT / "recipes" / "quickstart.yaml"
    with pytest.raises(RecipeNotFoundError, match=r"available recipes: .*quickstart"):
        recipe_path("no_such_recipe")


def test_unknown_recipe_exits_non_zero_with_the_list(tmp_path: Path) -> None:
    result = run_module("lightning_ot.fit", "--recipe", "no_such_recipe", cwd=tmp_path, timeout=300)
    assert result.returncode != 0
    assert "no recipe named 'no_such_recipe'" in result.stderr
    assert "quickstart" in result.stderr


def test_print_config_shows_the_recipe_with_overrides(tmp_path: Path) -> None:
    result = run_module(
        "lightning_ot.fit",
        "--recipe",
        "quickstart",
        "--trainer.max_epochs",
        "3",
        "--model.init_args.loss.init_args.margin",
        "0.25",
        "--print_config",
        cwd=tmp_path,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)
    assert config["trainer"]["max_epochs"] == 3
    assert config["model"]["init_args"]["loss"]["init_args"]["margin"] == 0.25
    assert config["model"]["init_args"]["backbone"]["class_path"] == "lightning_ot.models.LipschitzMLP"
    assert config["trainer"]["logger"]["class_path"] == "lightning.pytorch.loggers.WandbLogger"
    assert config["trainer"]["logger"]["init_args"]["offline"] is True


def test_fast_dev_run_in_process(capsys: pytest.CaptureFixture[str]) -> None:
    cli = main(["--recipe", "quickstart", "--trainer.fast_dev_run", "true", "--trainer.logger", "false"])
    assert cli.trainer.global_step == 1
    assert "validation accuracy:" in capsys.readouterr().out


def test_without_logger_the_config_lands_in_the_root_dir(tmp_path: Path) -> None:
    limits = [
        "--trainer.limit_train_batches",
        "2",
        "--trainer.limit_val_batches",
        "1",
        "--trainer.max_epochs",
        "1",
    ]
    main(["--recipe", "quickstart", "--trainer.logger", "false", *limits])
    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert saved["trainer"]["limit_train_batches"] == 2


def test_format_summary() -> None:
    text = format_summary({"val/acc": 0.975, "val/certified_acc@0.5": 0.5, "val/certified_acc@0.1": 0.9})
    assert text.splitlines() == [
        "validation accuracy: 97.50 %",
        "certified robust accuracy (L2 radius eps):",
        "  eps = 0.1     90.00 %",
        "  eps = 0.5     50.00 %",
    ]


@pytest.mark.slow
def test_short_real_run_leaves_an_offline_wandb_run(tmp_path: Path) -> None:
    result = run_module(
        "lightning_ot.fit",
        "--recipe",
        "quickstart",
        "--trainer.max_epochs",
        "3",
        "--trainer.enable_progress_bar",
        "false",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "validation accuracy:" in result.stdout
    accuracy = float(result.stdout.split("validation accuracy:")[1].split("%")[0])
    assert accuracy > 80.0

    (run_dir,) = (tmp_path / "wandb").glob("offline-run-*")
    assert (run_dir / "files" / "lightning_config.yaml").is_file()
    summary = wandb_records.summary(run_dir)
    # The CLI declares summary metrics: the best and the last value of each validation figure.
    assert summary["val/acc"]["last"] == pytest.approx(accuracy / 100, abs=1e-4)
    assert summary["val/acc"]["max"] >= summary["val/acc"]["last"]
    assert 0.0 < summary["val/certified_acc@0.1"]["last"] <= summary["val/acc"]["last"]
    epochs = {row["epoch"] for row in wandb_records.history(run_dir) if "val/acc" in row}
    assert epochs == {0, 1, 2}
    config = wandb_records.config(run_dir)
    assert config["trainer"]["max_epochs"] == 3
    assert config["model"]["init_args"]["backbone"]["class_path"] == "lightning_ot.models.LipschitzMLP"


@pytest.mark.slow
def test_wheel_ships_the_recipes(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path),
            str(REPO_ROOT),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("lightning_ot-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "lightning_ot/recipes/quickstart.yaml" in names
    assert "lightning_ot/py.typed" in names
