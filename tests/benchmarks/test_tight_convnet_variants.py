"""The tight-ConvNet variants benchmark runs end to end on a tiny configuration (figures not asserted)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "tight_convnet_variants.py"


def _run(*arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *arguments], capture_output=True, text=True, timeout=300, check=False
    )


def test_prints_a_paired_ratio_for_each_variant() -> None:
    completed = _run(
        "--threads", "1", "--batch-size", "8", "--repeats", "3", "--warmup", "1", "--pretrain-steps", "2",
        "--variants", "64/1,1", "64x2/1,1", "/1,1", "--straightness-weight", "10",
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr
    rows = re.findall(
        r"^ +(\S+) +[\d.]+ ms/step, twin +[\d.]+ ms +ratio ([\d.]+)x \(quartiles ([\d.]+)-([\d.]+)\); "
        r".* median ([\d.]+), 10th percentile ([\d.]+)$",
        completed.stdout,
        flags=re.MULTILINE,
    )
    assert [row[0] for row in rows] == ["64/1,1", "64x2/1,1", "/1,1"]
    for _, ratio, low, high, median, tenth in rows:
        assert float(low) <= float(ratio) <= float(high)
        assert float(median) > 0.99  # the backbone preserves gradient norms by construction
        assert float(tenth) > 0.99
    assert "batch 8, after 2 Adam steps" in completed.stdout
    # each variant again with the straightness penalty in its loss, against the same twin
    for variant, *_ in rows:
        straightened = re.search(
            rf"^ +{re.escape(variant)} \+straightness +[\d.]+ ms/step, the same twin +ratio ([\d.]+)x "
            r"\(quartiles ([\d.]+)-([\d.]+)\)$",
            completed.stdout,
            flags=re.MULTILINE,
        )
        assert straightened is not None, completed.stdout
        ratio, low, high = (float(value) for value in straightened.groups())
        assert low <= ratio <= high


def test_a_malformed_variant_is_refused_by_name() -> None:
    completed = _run("--variants", "wide/3,6", "--pretrain-steps", "0")
    assert completed.returncode != 0
    assert "--variants: expected HIDDEN/STAGE_CONVS" in completed.stderr
    assert "'wide/3,6'" in completed.stderr
    indivisible = _run("--variants", "64x3/1,1", "--pretrain-steps", "0")
    assert indivisible.returncode != 0
    assert (
        "--variants 64x3/1,1: `hidden_groups` 3 must divide the layer's input width 784" in indivisible.stderr
    )
    refused = _run("--straightness-weight", "-1", "--pretrain-steps", "0")
    assert refused.returncode != 0
    assert "--straightness-weight: expected a number >= 0" in refused.stderr
