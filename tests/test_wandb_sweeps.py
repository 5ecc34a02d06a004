"""The W&B sweep files: well formed, and their commands are valid LightningCLI runs of existing recipes.

Each sweep's command is rebuilt the way ``wandb agent`` does (``${args}`` becomes one ``--key=value``
per parameter) with a sample value of every parameter, and run with ``--print_config``: LightningCLI
rejects an unknown key, and the printed config must carry the swept values.
"""

from __future__ import annotations

import contextlib
import io
import math
from pathlib import Path
from typing import Any

import pytest
import yaml

from lightning_ot.recipes import available_recipes

SWEEPS = sorted((Path(__file__).resolve().parent.parent / "sweeps").glob("*.yaml"))
MAIN_RECIPES = ("quickstart", "fashion_mnist", "imagenet")


def _load(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def _recipe(command: list[str]) -> str:
    return command[command.index("--recipe") + 1]


def _sample(spec: dict[str, Any]) -> Any:
    if "values" in spec:
        return spec["values"][-1]
    if "value" in spec:
        return spec["value"]
    if spec.get("distribution", "").startswith("log_uniform"):
        return math.sqrt(spec["min"] * spec["max"])
    return (spec["min"] + spec["max"]) / 2


def _nested(config: dict[str, Any], dotted: str) -> Any:
    value: Any = config
    for part in dotted.split("."):
        value = value[part]
    return value


def test_one_sweep_per_main_recipe() -> None:
    assert {path.stem for path in SWEEPS} >= set(MAIN_RECIPES)


@pytest.mark.parametrize("path", SWEEPS, ids=lambda path: path.stem)
def test_sweep_file_is_well_formed(path: Path) -> None:
    sweep = _load(path)
    assert sweep["method"] in {"grid", "random", "bayes"}
    assert sweep["metric"]["goal"] in {"maximize", "minimize"}
    assert sweep["metric"]["name"].startswith("val/")
    assert sweep["parameters"], "no parameter swept"
    for name, spec in sweep["parameters"].items():
        assert name.startswith(("model.", "data.", "trainer.")), name
        if "values" in spec:
            assert spec["values"], name
        else:
            assert spec["distribution"] in {"uniform", "log_uniform_values", "int_uniform"}, name
            assert 0 < spec["min"] < spec["max"], name
        if sweep["method"] == "grid":
            assert "values" in spec, f"grid search needs `values` for {name}"
    command = sweep["command"]
    assert command[:4] == ["${env}", "python", "-m", "lightning_ot.fit"]
    assert command[-1] == "${args}"
    assert _recipe(command) == path.stem
    assert "--trainer.logger.init_args.offline=false" in command, "agent runs must log online"


@pytest.mark.parametrize("path", SWEEPS, ids=lambda path: path.stem)
def test_sweep_command_is_a_valid_override_of_its_recipe(path: Path) -> None:
    from lightning_ot.fit import main

    sweep = _load(path)
    recipe = _recipe(sweep["command"])
    if recipe not in available_recipes():
        pytest.skip(f"recipe {recipe!r} is not in this checkout (recipes: {available_recipes()})")
    fixed = sweep["command"][sweep["command"].index(recipe) + 1 : -1]
    values = {name: _sample(spec) for name, spec in sweep["parameters"].items()}
    arguments = ["--recipe", recipe, *fixed, *[f"--{name}={value}" for name, value in values.items()]]
    output = io.StringIO()
    with contextlib.redirect_stdout(output), pytest.raises(SystemExit) as exit_info:
        main([*arguments, "--print_config"])
    assert exit_info.value.code in (0, None), output.getvalue()
    config = yaml.safe_load(output.getvalue())
    for name, value in values.items():
        assert _nested(config, name) == pytest.approx(value), name
    assert _nested(config, "trainer.logger.init_args.offline") is False
