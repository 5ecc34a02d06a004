"""The GPU checks run end to end on a CPU at tiny sizes, and their recipe reading matches LightningCLI's."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
SCRIPT = BENCHMARKS / "gpu_checks.py"


@pytest.mark.slow
def test_every_section_runs_on_a_cpu_and_writes_its_figures(tmp_path: Path) -> None:
    figures = tmp_path / "gpu_checks.json"
    completed = subprocess.run(
        [
            sys.executable, str(SCRIPT), "--device", "cpu", "--quick", "--threads", "1", "--repeats", "2",
            "--warmup", "1", "--pretrain-steps", "2", "--fit-epochs", "2", "--json", str(figures),
        ],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stdout + completed.stderr
    results = json.loads(figures.read_text())
    assert results["environment"]["device"] == "cpu"
    for section in ("tax", "precision", "compile", "fit"):
        assert "error" not in results[section], results[section]

    for precision in ("float32", "bf16"):
        timed = results["tax"]["mnist5k"][precision]
        low, high = timed["ratio_quartiles"]
        assert low <= timed["ratio"] <= high
        assert timed["otnn_ms"] > 0
        assert timed["twin_ms"] > 0
    # The tight network keeps its gradient norm, in bf16 to bf16's precision.
    assert results["tax"]["mnist5k"]["float32"]["gradient_norm"]["p10"] > 0.999
    assert results["tax"]["mnist5k"]["bf16"]["gradient_norm"]["p10"] > 0.99

    precision = results["precision"]
    exact = precision["float32, TF32 off"]
    assert exact["max_error_over_median_radius"] < 1e-4
    assert exact["largest_excess"] < 1e-5
    assert (
        precision["bf16 autocast"]["max_error_over_median_radius"]
        > 100 * exact["max_error_over_median_radius"]
    )
    assert precision["audit_upper_bound"] <= 1.0 + 1e-4

    compiled = results["compile"]
    assert compiled["backend"] == "aot_eager"
    assert compiled["largest_logit_difference"] < 0.1  # full Björck against the retracted matrices

    fit = results["fit"]["32-true"]
    assert fit["validation"]["val/acc"] > 0.1  # two short epochs of two batches: above chance
    assert fit["gradient_norm"]["median"] > 0.999
    assert 0 < fit["explanation_share"] < 1
    trained = fit["precision"]  # the trained network's radii on the held-out digits
    assert trained["samples"] == 1000
    assert trained["float32, TF32 off"]["largest_excess"] < 1e-5
    assert (
        trained["bf16 autocast"]["max_error_over_median_radius"]
        > trained["float32, TF32 off"]["max_error_over_median_radius"]
    )


def test_the_recipe_is_built_as_lightning_cli_builds_it() -> None:
    import yaml

    sys.path.insert(0, str(BENCHMARKS))
    try:
        from gpu_checks import RECIPES, instantiate
    finally:
        sys.path.remove(str(BENCHMARKS))
    from lightning_ot.fit import OTLightningCLI
    from lightning_ot.recipes import recipe_path

    recipe = yaml.safe_load((RECIPES / "mnist5k.yaml").read_text())
    model = instantiate(recipe["model"])
    data = instantiate(recipe["data"])
    cli = OTLightningCLI(
        args=["--config", str(recipe_path("mnist5k")), "--trainer.logger", "false"], run=False
    )
    assert type(model.backbone) is type(cli.model.backbone)
    assert {name: tuple(value.shape) for name, value in model.state_dict().items()} == {
        name: tuple(value.shape) for name, value in cli.model.state_dict().items()
    }
    assert {key: cli.model.hparams[key] for key in model.hparams} == dict(model.hparams)
    assert repr(model.backbone) == repr(cli.model.backbone)
    assert repr(model.loss) == repr(cli.model.loss)
    assert type(data) is type(cli.datamodule)
    assert data.batch_size == cli.datamodule.batch_size
    parameters = [torch.nn.Parameter(torch.zeros(1))]
    ours, theirs = model.optimizer_factory(parameters), cli.model.optimizer_factory(parameters)
    assert type(ours) is type(theirs)
    assert ours.defaults == theirs.defaults
    assert model.lr_scheduler_factory(ours).T_max == cli.model.lr_scheduler_factory(theirs).T_max


def test_bad_options_are_refused_by_name() -> None:
    for arguments, message in (
        (["--repeats", "1"], "--repeats must be >= 2"),
        (["--fit-epochs", "0"], "--fit-epochs must be >= 1"),
        (["--sections", "speed"], "invalid choice: 'speed'"),
    ):
        completed = subprocess.run(
            [sys.executable, str(SCRIPT), "--device", "cpu", *arguments],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert completed.returncode == 2
        assert message in completed.stderr, completed.stderr
