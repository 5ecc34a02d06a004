"""The fixed-costs benchmark runs end to end on a few rounds (its figures are not asserted)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "fixed_costs.py"


def test_prints_a_paired_ratio_for_each_path() -> None:
    completed = subprocess.run(
        [sys.executable, str(SCRIPT), "--threads", "1", "--rounds", "8"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    # Any token as a number, so that an odd figure fails below with its line rather than going uncounted.
    ratios = re.findall(r"ratio (\S+)x \(quartiles (\S+?)-(\S+)\)", completed.stdout)
    assert len(ratios) == 7, completed.stdout
    for ratio, low, high in ratios:
        assert 0 < float(low) <= float(ratio) <= float(high), completed.stdout
    assert "1 thread(s)" in completed.stdout
