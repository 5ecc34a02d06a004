"""``python -m lightning_ot {fit,validate,test,predict}`` for real on a tiny checkpoint, and the errors a
user gets for a bad argument (the project's message last, exit code 2, no traceback unless asked)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from lightning_ot import OTClassifier
from lightning_ot.data import DigitsDataModule, ImageFolderDataset
from lightning_ot.fit import ConfigurationError, main
from lightning_ot.recipes import available_recipes
from lightning_ot.threads import choose_num_threads
from tests.conftest import run_module

pytestmark = pytest.mark.slow

# A tiny quickstart: one small hidden layer, two training batches, no explanation callback.
TINY = [
    "--recipe",
    "quickstart",
    "--model.init_args.backbone.init_args.hidden_features",
    "[16]",
    "--trainer.callbacks=[]",
    "--trainer.enable_progress_bar",
    "false",
]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("cli")
    result = run_module(
        "lightning_ot",
        "fit",
        *TINY,
        "--trainer.max_epochs",
        "1",
        "--trainer.limit_train_batches",
        "2",
        cwd=folder,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "validation accuracy:" in result.stdout
    assert "LightningCLI's args parameter" not in result.stderr
    # Where the README says checkpoints land with the default W&B logger.
    (path,) = (folder / "lightning-ot").glob("*/checkpoints/*.ckpt")
    assert path.parent.parent.parent == folder / "lightning-ot"
    return path


def _last_lines(text: str, count: int) -> list[str]:
    return [line for line in text.splitlines() if line.strip()][-count:]


def test_predict_writes_predictions_with_certified_radii(checkpoint: Path, tmp_path: Path) -> None:
    result = run_module(
        "lightning_ot",
        "predict",
        *TINY,
        "--trainer.logger",
        "false",
        "--ckpt_path",
        str(checkpoint),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    path = tmp_path / "predictions.csv"
    assert f"predictions of 360 inputs written to {path}" in result.stdout
    rows = list(csv.DictReader(path.open()))
    assert list(rows[0]) == ["index", "prediction", "runner_up", "margin", "certified_radius"]
    assert [int(row["index"]) for row in rows] == list(range(360))
    # The same numbers as the checkpointed model on the same images.
    model = OTClassifier.load_from_checkpoint(checkpoint, weights_only=False)
    data = DigitsDataModule()
    data.setup("predict")
    images = data.val_dataset.tensors[0]
    with torch.no_grad():
        logits = model(images)
    radius = model.certified_radius(logits)
    top2 = logits.topk(2, dim=1)
    assert [int(row["prediction"]) for row in rows] == top2.indices[:, 0].tolist()
    assert [int(row["runner_up"]) for row in rows] == top2.indices[:, 1].tolist()
    torch.testing.assert_close(
        torch.tensor([float(row["certified_radius"]) for row in rows]), radius, rtol=1e-5, atol=1e-6
    )
    margin = torch.tensor([float(row["margin"]) for row in rows])
    torch.testing.assert_close(margin, top2.values[:, 0] - top2.values[:, 1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("subcommand", ["validate", "test"])
def test_validate_and_test_evaluate_the_checkpoint(
    checkpoint: Path, subcommand: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        cli = main([subcommand, *TINY, "--trainer.logger", "false", "--ckpt_path", str(checkpoint)])
        # The policy: a model under 1M parameters on the CPU runs with one thread.
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
    stage = "val" if subcommand == "validate" else "test"
    metrics = cli.trainer.callback_metrics
    assert 0.0 <= float(metrics[f"{stage}/acc"]) <= 1.0
    assert float(metrics[f"{stage}/certified_acc@0.5"]) <= float(metrics[f"{stage}/acc"])
    saved = torch.load(checkpoint, weights_only=False)["state_dict"]
    for name, value in cli.model.state_dict().items():
        assert torch.equal(value, saved[name]), name


@pytest.mark.parametrize(
    ("arguments", "last_lines"),
    [
        (
            ["--recipe", "quickstart", "--model.init_args.loss.init_args.margin", "0"],
            ["`margin` must be a finite number > 0, got 0.0"],
        ),
        (
            [
                "--recipe",
                "quickstart",
                "--data",
                "lightning_ot.data.ImageFolderDataModule",
                "--data.train_dir",
                "no_such_folder",
                "--data.image_size",
                "8",
            ],
            [
                "image folder not found: no_such_folder",
                "expected layout:",
                *ImageFolderDataset.LAYOUT.splitlines(),
            ],
        ),
    ],
    ids=["bad_value", "missing_folder"],
)
def test_a_bad_argument_ends_with_the_project_message(
    tmp_path: Path, arguments: list[str], last_lines: list[str]
) -> None:
    result = run_module(
        "lightning_ot.fit", *arguments, "--trainer.logger", "false", cwd=tmp_path, timeout=300
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "LightningCLI's args parameter" not in result.stderr
    heading = "error: the configuration could not be built (--traceback shows where):"
    assert _last_lines(result.stderr, len(last_lines) + 1) == [heading, *last_lines]


def test_traceback_on_request(monkeypatch: pytest.MonkeyPatch) -> None:
    arguments = ["--recipe", "quickstart", "--model.init_args.loss.init_args.hinge_weight", "-1"]
    with pytest.raises(SystemExit) as exit_info:
        main(arguments)
    assert exit_info.value.code == 2
    with pytest.raises(ConfigurationError) as error:
        main([*arguments, "--traceback"])
    assert isinstance(error.value.cause, ValueError)
    assert str(error.value) == "`hinge_weight` must be a finite number >= 0, got -1.0"
    monkeypatch.setenv("LIGHTNING_OT_TRACEBACK", "1")
    with pytest.raises(ConfigurationError):
        main(arguments)


def test_thread_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    small, large = torch.nn.Linear(10, 10), torch.nn.Linear(1000, 1000)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    assert choose_num_threads("auto", small, on_cpu=True)[0] == 1
    assert choose_num_threads("auto", small, on_cpu=False)[0] is None
    assert choose_num_threads("auto", large, on_cpu=True)[0] is None
    assert choose_num_threads("auto", large, on_cpu=True, processes_per_machine=64)[0] == 1
    assert choose_num_threads(4, small, on_cpu=True) == (4, "requested")
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert choose_num_threads("auto", small, on_cpu=True) == (None, "OMP_NUM_THREADS=3 is set")
    with pytest.raises(ValueError, match="`num_threads` must be 'auto' or an integer >= 1, got 0"):
        choose_num_threads(0, small, on_cpu=True)


def test_recipe_without_a_name_and_a_missing_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--recipe", "--trainer.max_epochs", "1"])
    assert exit_info.value.code == 2
    assert _last_lines(capsys.readouterr().err, 1) == [
        "error: --recipe needs a name; available recipes: " + ", ".join(available_recipes())
    ]
    with pytest.raises(SystemExit) as exit_info:  # python -m lightning_ot: the subcommand is required
        main(["--recipe", "quickstart"], default_subcommand=None, prog="python -m lightning_ot")
    assert exit_info.value.code == 2
    assert _last_lines(capsys.readouterr().err, 1)[0].startswith(
        'error: expected "subcommand" to be one of {fit,validate,test,predict}'
    )
