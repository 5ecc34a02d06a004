"""The export-speed benchmark runs end to end on a tiny configuration (its figures are not asserted)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "export_speed.py"


def test_prints_paired_ratios_for_each_batch_size_and_part() -> None:
    completed = subprocess.run(
        [sys.executable, str(SCRIPT), "--batch-sizes", "1", "3", "--threads", "1", "--rounds", "3",
         "--block-seconds", "0.001", "--models", "MLP", "--parts"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr
    ratios = re.findall(r"ratio +([\d.]+)x \(quartiles ([\d.]+)-([\d.]+)\)", completed.stdout)
    assert len(ratios) == 2 + 2 * 3  # the MLP at two batch sizes, three parts at two batch sizes
    for ratio, low, high in ratios:
        assert float(low) <= float(ratio) <= float(high)
    assert "1 thread(s)" in completed.stdout
