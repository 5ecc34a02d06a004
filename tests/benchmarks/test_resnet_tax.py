"""The ImageNet-scale tax and tightness benchmarks run end to end on tiny settings (figures not asserted)."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
TINY = ["--image-size", "32", "--stage-blocks", "1", "1", "1", "1", "--num-outputs", "10", "--threads", "1"]


def _run(script: str, *arguments: str) -> str:
    completed = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *arguments],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    return completed.stdout


def test_tax_curve_prints_paired_ratios_the_weights_share_and_the_eval_path(tmp_path: Path) -> None:
    figures, picture = tmp_path / "tax.json", tmp_path / "tax.png"
    output = _run(
        "resnet_tax.py", "--widths", "0.125", "--batch-sizes", "1", "2", "--rounds", "3",
        "--pretrain-steps", "1", "--json", str(figures), "--plot", str(picture), *TINY,
    )  # fmt: skip
    rows = re.findall(
        r"batch +(\d+) +(?:wall|cpu) +plain +[\d.]+ ms +1-Lipschitz +[\d.]+ ms +ratio +([\d.]+)x \(quartiles ([\d.]+)-([\d.]+)\)"
        r" +weights / plain step +([\d.]+) %",
        output,
    )
    assert [int(row[0]) for row in rows] == [1, 1, 2, 2]  # wall-clock and CPU time
    for _, ratio, low, high, _share in rows:
        assert float(low) <= float(ratio) <= float(high)
    assert re.search(
        r"weight recomputation alone \(forward \+ backward of 13 constrained weights\): \d+ ms wall", output
    )
    assert re.search(r"eval: first forward after a weight change .* certification", output)
    assert "pretrained 1 Adam steps" in output
    result = json.loads(figures.read_text())["results"][0]
    assert set(result["batches"]) == {"1", "2"}
    assert result["weights_s"] > 0
    assert result["batches"]["2"]["cpu_ratio"] > 0
    assert picture.read_bytes().startswith(b"\x89PNG")
    # the plot of several runs together (what --plot-from draws from their JSON files)
    spec = importlib.util.spec_from_file_location("resnet_tax", BENCHMARKS / "resnet_tax.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    combined = tmp_path / "combined.png"
    module.plot([result, {**result, "label": "again"}], combined, "two runs")
    assert combined.read_bytes().startswith(b"\x89PNG")


def test_tightness_benchmark_reports_both_variants(tmp_path: Path) -> None:
    figures = tmp_path / "tightness.json"
    output = _run(
        "resnet_tightness.py", "--skip-init", "--width", "0.125", "--image-size", "32", "--num-classes", "10",
        "--steps", "2", "--every", "2", "--held-out", "8", "--threads", "1", "--json", str(figures),
    )  # fmt: skip
    medians = re.findall(r"(standard|norm-preserving) +step +2: \|\|grad f_k\|\| median ([\d.]+)", output)
    assert [name for name, _ in medians] == ["standard", "norm-preserving"]
    assert float(medians[1][1]) > 0.99  # by construction
    history = json.loads(figures.read_text())["training"]
    assert [entry["step"] for entry in history["norm-preserving"]] == [0, 2]


def test_constant_breakdown_names_every_part() -> None:
    output = _run(
        "resnet_constant.py", "--width", "0.125", "--num-outputs", "10", "--repeats", "1", "--threads", "1"
    )
    groups = re.findall(
        r"^(conv 3x3 \d+ -> \d+|conv 1x1 \d+ -> \d+|linear \d+ -> \d+) +(\d+) +(\d+)-(\d+)", output, re.M
    )
    assert sum(int(count) for _, count, _, _ in groups) == 37  # every orthogonal layer, in its group
    assert all(int(low) >= 1 for _, _, low, _ in groups)  # Björck steps run (one at initialization)
    assert re.search(
        r"total \d+ ms: Björck \d+ ms .* BCOP projections \d+ ms .* kernel assembly \d+ ms", output
    )
