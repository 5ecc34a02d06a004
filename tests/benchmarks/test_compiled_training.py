"""The compiled-training benchmark runs end to end on a tiny configuration (figures not asserted)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import torch

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "compiled_training.py"


def _run(*arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *arguments], capture_output=True, text=True, timeout=300, check=False
    )


def test_times_eager_and_each_backend_and_prints_their_ratio() -> None:
    flushes = torch.set_flush_denormal(True)  # x86 with SSE3 only
    torch.set_flush_denormal(False)
    completed = _run(
        "--threads", "1", "--batch-size", "8", "--repeats", "2", "--warmup", "1", "--pretrain-steps", "2",
        "--variant", "64/1,1", "--backends", "aot_eager", *(["--flush-denormal"] if flushes else []),
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr
    flushed = ", denormals flushed to zero" if flushes else ""
    assert f"batch 8, 64/1,1, after 2 Adam steps with retraction{flushed}\n" in completed.stdout
    rows = re.findall(
        r"^ +(\w+) +[\d.]+ ms/step, eager +[\d.]+ ms +ratio ([\d.]+)x \(quartiles ([\d.]+)-([\d.]+)\); "
        r"first step [\d.]+ s$",
        completed.stdout,
        flags=re.MULTILINE,
    )
    assert [row[0] for row in rows] == ["aot_eager"], completed.stdout
    _, ratio, low, high = rows[0]
    assert float(low) <= float(ratio) <= float(high)


def test_a_malformed_variant_is_refused_by_name() -> None:
    for variant, message in (
        ("wide/3,6", "expected HIDDEN/STAGE_CONVS"),
        ("64x3/1,1", "`hidden_groups` 3 must divide the layer's input width 784"),
    ):
        completed = _run("--variant", variant, "--pretrain-steps", "0")
        assert completed.returncode != 0
        assert f"--variant {variant}: " in completed.stderr, completed.stderr
        assert message in completed.stderr, completed.stderr
