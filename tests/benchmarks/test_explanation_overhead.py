"""The explanation-overhead benchmark runs end to end on the quickstart (its timings are not asserted)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "explanation_overhead.py"
PARTS = ("explain()", "XAI metrics", "grid", "PNG", "W&B log_image", "Lightning log_dict")


@pytest.mark.slow
def test_prints_the_callbacks_share_and_where_its_time_goes(tmp_path: Path) -> None:
    environment = {**os.environ, "WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path)}
    completed = subprocess.run(
        [sys.executable, str(SCRIPT), "--repeats", "1", "--epochs", "3", "--metrics-every", "2"],
        capture_output=True, text=True, timeout=600, check=False, cwd=tmp_path, env=environment,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-3000:]
    share = re.search(r"callback time per epoch: +(\S+) s = (\S+) % of an epoch", completed.stdout)
    assert share is not None, completed.stdout
    assert float(share.group(1)) > 0
    assert float(share.group(2)) > 0
    rows = re.findall(r"^  (\S.*?) +(\S+) +\((\S+)\)$", completed.stdout, flags=re.MULTILINE)
    milliseconds = {part: float(value) for part, value, _ in rows}
    calls = {part: float(count) for part, _, count in rows}
    assert set(milliseconds) == set(PARTS), completed.stdout
    assert all(value > 0 for value in milliseconds.values()), completed.stdout
    # per run: one explanation, one grid, PNG and W&B image; the metrics every second run
    assert calls["explain()"] == calls["grid"] == calls["PNG"] == calls["W&B log_image"] == 1.0
    assert calls["XAI metrics"] == 0.5
