"""The boundary-search benchmark runs end to end on the 8x8 digits (its timings are not asserted)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "boundary_search.py"


def test_prints_each_search_with_its_cost_ratio_and_tightness() -> None:
    completed = subprocess.run(
        [sys.executable, str(SCRIPT), "--repeats", "1", "--refinements", "5"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr
    rows = re.findall(
        r"(newton|nearest, 5 rounds) +[\d.]+ ms +\( *([\d.]+)x Newton's\) +boundary / radius: median ([\d.]+)",
        completed.stdout,
    )
    assert [row[0] for row in rows] == ["newton", "nearest, 5 rounds"]
    assert float(rows[0][1]) == 1.0
    newton, nearest = float(rows[0][2]), float(rows[1][2])
    # both are boundary points of a certified network: never inside the certificate; nearest no farther
    assert 1.0 - 1e-4 <= nearest <= newton + 1e-6
