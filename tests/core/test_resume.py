"""A fit resumed from a checkpoint, at the end of an epoch or in the middle of one, ends where the
uninterrupted fit ends: parameters, buffers (the soft-hKR running mean), optimizer and scheduler."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.ddp._resume_runs import RESUMED, run_all
from tests.resume_checks import largest_difference

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out_dir = tmp_path_factory.mktemp("resume")
    run_all(out_dir, devices=1)
    return out_dir


@pytest.mark.parametrize("resumed_from", RESUMED)
def test_resumed_fit_equals_the_uninterrupted_fit(runs: Path, resumed_from: str) -> None:
    uninterrupted = torch.load(runs / "uninterrupted_rank0.pt", weights_only=False)
    resumed = torch.load(runs / f"{resumed_from}_rank0.pt", weights_only=False)
    assert largest_difference(resumed, uninterrupted) <= 1e-6


def test_the_stopped_fit_ends_elsewhere(runs: Path) -> None:
    """The comparison can fail: 36 steps fewer leave the weights far from the uninterrupted fit's."""
    uninterrupted = torch.load(runs / "uninterrupted_rank0.pt", weights_only=False)["parameters_and_buffers"]
    stopped = torch.load(runs / "stop_mid_rank0.pt", weights_only=False)["parameters_and_buffers"]
    assert max(float((stopped[name] - uninterrupted[name]).abs().max()) for name in stopped) > 1e-3
