"""The example user project (``examples/custom_project``) runs as documented and learns."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

EXAMPLE = REPO_ROOT / "examples" / "custom_project"


@pytest.mark.slow
def test_custom_project_trains_and_certifies(tmp_path: Path) -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")])
    env.update(OMP_NUM_THREADS="1", WANDB_MODE="offline", WANDB_SILENT="true")
    result = subprocess.run(
        [sys.executable, "train.py", "--max-epochs", "12", "--output-dir", str(tmp_path)],
        cwd=EXAMPLE,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert "val/acc" in result.stdout
    # Two moons are separable: the OTNN must learn them, with certificates and near-unit gradients.
    assert metrics["val/acc"] > 0.93
    assert metrics["val/certified_acc@0.02"] > 0.85
    assert metrics["val/certified_acc@0.02"] <= metrics["val/acc"]
    assert 0.6 < metrics["gradient_norm_mean"] <= 1.0 + 1e-4
    # The subclass's own `compute_loss` entry is logged next to the hKR terms.
    assert 0.0 <= metrics["val/inside_margin"] <= 1.0
    assert {"val/kr", "val/hinge", "val/loss"} <= set(metrics)
    # Its CSV logger wrote the training curves.
    (csv_file,) = tmp_path.glob("lightning_logs/version_*/metrics.csv")
    assert "train/inside_margin" in csv_file.read_text().splitlines()[0]
