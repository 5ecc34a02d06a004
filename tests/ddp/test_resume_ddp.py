"""Under DDP (2 CPU processes, gloo, launched as a script as ``torchrun`` would), a fit resumed from a
checkpoint written at the end of an epoch or in the middle of one ends where the uninterrupted DDP fit
ends, on every rank."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.conftest import run_module
from tests.ddp._resume_runs import RESUMED
from tests.ddp.test_lightning_ddp import LAUNCH_VARIABLES
from tests.resume_checks import largest_difference

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out_dir = tmp_path_factory.mktemp("resume_ddp")
    with pytest.MonkeyPatch.context() as patch:
        for name in LAUNCH_VARIABLES:
            patch.delenv(name, raising=False)
        result = run_module("tests.ddp._resume_runs", str(out_dir), "2", cwd=out_dir, timeout=400)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out_dir


@pytest.mark.parametrize("rank", [0, 1])
@pytest.mark.parametrize("resumed_from", RESUMED)
def test_resumed_ddp_fit_equals_the_uninterrupted_ddp_fit(runs: Path, resumed_from: str, rank: int) -> None:
    uninterrupted = torch.load(runs / f"uninterrupted_rank{rank}.pt", weights_only=False)
    resumed = torch.load(runs / f"{resumed_from}_rank{rank}.pt", weights_only=False)
    assert resumed["world_size"] == 2
    assert largest_difference(resumed, uninterrupted) <= 1e-6


def test_ranks_saw_different_halves_of_each_global_batch(runs: Path) -> None:
    from lightning_ot.data import DigitsDataModule
    from lightning_ot.data.sampling import EpochShuffleSampler

    data = DigitsDataModule()
    data.setup("fit")
    halves = [EpochShuffleSampler(data.train_dataset, seed=0, num_replicas=2, rank=rank) for rank in (0, 1)]
    single = EpochShuffleSampler(data.train_dataset, seed=0)
    first, second = (list(half)[:32] for half in halves)
    assert not set(first) & set(second)
    assert sorted(first + second) == sorted(list(single)[:64])  # 2 x 32 = the global batch of 64
