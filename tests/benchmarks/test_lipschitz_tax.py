"""The Lipschitz-tax benchmark runs end to end on a tiny configuration (its figures are not asserted)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "lipschitz_tax.py"


def _run(*arguments: str) -> str:
    completed = subprocess.run(
        [sys.executable, str(SCRIPT), *arguments], capture_output=True, text=True, timeout=300, check=False
    )
    assert completed.returncode == 0, completed.stderr
    return completed.stdout


def test_small_backbones_print_paired_ratios_after_pretraining() -> None:
    output = _run(
        "--batch-sizes", "8", "--repeats", "3", "--warmup", "1", "--threads", "1",
        "--skip-peers", "--skip-celeba", "--skip-resnet", "--pretrain-steps", "2",
    )  # fmt: skip
    ratios = re.findall(
        r"lightning_ot +[\d.]+ ms/step +ratio +([\d.]+)x \(quartiles ([\d.]+)-([\d.]+)\)", output
    )
    assert len(ratios) == 5  # the three ConvNets and the two MLPs
    # the two circular-padded ConvNets are also timed against a twin with nn.Conv2d's own padding
    assert len(re.findall(r"twin, nn.Conv2d pad +[\d.]+ ms/step +ratio", output)) == 2
    norms = [float(value) for value in re.findall(r"gradient norm .* median ([\d.]+)", output)]
    assert len(norms) == 5
    assert norms[1] > 0.99  # the norm-preserving ConvNet
    assert norms[2] > 0.99  # the same with a two-block head
    assert norms[3] > 0.99  # the quickstart MLP
    assert norms[0] < 0.9  # the widening ConvNet
    for ratio, low, high in ratios:
        assert float(low) <= float(ratio) <= float(high)
    assert "after 2 Adam steps" in output
    assert re.search(r"inference, batch 8: .* ratio [\d.]+x", output)


@pytest.mark.slow
def test_resnet_child_reports_the_memory_of_one_training_step() -> None:
    output = _run("--_resnet-child", "1.0,0", "--resnet-batch", "1", "--resnet-image-size", "32")
    figures = json.loads(output.strip().splitlines()[-1])
    assert 20e6 < figures["plain_parameters"] < 30e6  # about 25M parameters once exported
    assert figures["peak_rss_mb"] >= figures["rss_before_mb"] > 0
    assert figures["step_seconds"] > 0
