"""OTClassifier under Lightning DDP (2 CPU processes, gloo, ``LipschitzDDPStrategy`` in a subprocess).

Exact equivalence with one process on the global batch, identical state on every rank, synced
metrics, checkpoint resume in DDP and in a single process.

A script launch, as ``torchrun`` and SLURM do (``ddp_spawn``, which pickles the model, is tested in
``test_ddp_spawn.py``).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.conftest import run_module
from tests.ddp._lightning_helpers import (
    CERTIFIED_EPS,
    STRAIGHTNESS_VARIABLE,
    VAL_POINTS,
    PairedDataModule,
    fit,
    make_model,
)

pytestmark = pytest.mark.slow


def _fit(
    folder: Path, devices: int, max_epochs: int, ckpt_path: Path | None = None, seed: int = 0
) -> list[dict]:
    if devices == 1:
        fit(folder, devices, max_epochs, ckpt_path, seed)
    else:
        # `strategy="ddp"` re-launches the running script once per extra rank: run it as a script.
        args = [str(folder), str(devices), str(max_epochs)] + (
            [str(ckpt_path), str(seed)] if ckpt_path else []
        )
        result = run_module("tests.ddp._lightning_helpers", *args, cwd=folder.parent, timeout=300)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return [torch.load(folder / f"rank{rank}.pt") for rank in range(devices)]


def _assert_states_close(actual: dict, expected: dict, atol: float) -> None:
    assert actual.keys() == expected.keys()
    for name, value in expected.items():
        torch.testing.assert_close(actual[name], value, atol=atol, rtol=0, msg=name)


# Set by a launcher (torchrun, SLURM, or an earlier in-process DDP run): a child seeing them would not
# launch its peers and wait for them forever.
LAUNCH_VARIABLES = (
    "LOCAL_RANK",
    "NODE_RANK",
    "RANK",
    "WORLD_SIZE",
    "LOCAL_WORLD_SIZE",
    "GROUP_RANK",
    "MASTER_ADDR",
    "MASTER_PORT",
    "TORCHELASTIC_RUN_ID",
    "SLURM_NTASKS",
    "SLURM_JOB_ID",
)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict] | Path]:
    with pytest.MonkeyPatch.context() as patch:
        for name in LAUNCH_VARIABLES:
            patch.delenv(name, raising=False)
        return _all_runs(tmp_path_factory.mktemp("lightning_ddp"))


def _all_runs(root: Path) -> dict[str, list[dict] | Path]:
    ddp = _fit(root / "ddp", devices=2, max_epochs=1)
    single = _fit(root / "single", devices=1, max_epochs=1)
    checkpoint = root / "ddp" / "last.ckpt"
    # Resumed runs start from another initialization: the checkpoint must overwrite all of it.
    resumed_single = _fit(root / "resumed_single", devices=1, max_epochs=2, ckpt_path=checkpoint, seed=1)
    resumed_ddp = _fit(root / "resumed_ddp", devices=2, max_epochs=2, ckpt_path=checkpoint, seed=1)
    return {
        "ddp": ddp,
        "single": single,
        "resumed_single": resumed_single,
        "resumed_ddp": resumed_ddp,
        "checkpoint": checkpoint,
    }


def test_ddp_step_equals_single_process_step_on_the_global_batch(runs: dict) -> None:
    ddp, single = runs["ddp"][0], runs["single"][0]
    assert ddp["world_size"] == 2
    assert single["world_size"] == 1
    assert len(ddp["losses"]) == len(single["losses"]) == 3
    torch.testing.assert_close(torch.tensor(ddp["losses"]), torch.tensor(single["losses"]), atol=1e-5, rtol=0)
    _assert_states_close(ddp["first"], single["first"], atol=1e-5)
    _assert_states_close(ddp["last"], single["last"], atol=1e-5)
    moved = max(
        (ddp["last"][name] - make_model().state_dict()[name.split(":", 1)[1]]).abs().max()
        for name in ddp["last"]
        if name.startswith("param:")
    )
    assert moved > 1e-3


def test_every_parameter_and_buffer_is_identical_on_all_ranks(runs: dict) -> None:
    for run in ("ddp", "resumed_ddp"):
        rank0, rank1 = runs[run]
        assert any(name.startswith("buffer:loss.") for name in rank0["last"])
        for name, value in rank0["last"].items():
            assert torch.equal(value, rank1["last"][name]), (run, name)


def test_validation_metrics_are_synced_over_ranks(runs: dict) -> None:
    rank0, rank1 = runs["ddp"]
    # Each image appears with both labels, one per rank: only the synced accuracy is exactly 0.5.
    assert rank0["metrics"]["val/acc"] == rank1["metrics"]["val/acc"] == pytest.approx(0.5)
    model = make_model()
    model.load_state_dict(
        {name.split(":", 1)[1]: value for name, value in rank0["last"].items()}, strict=False
    )
    radius = model.certified_radius(model(PairedDataModule(1).val_points).detach())
    for eps in CERTIFIED_EPS:
        expected = float((radius > eps).sum()) / (2 * VAL_POINTS)
        for record in (rank0, rank1):
            assert record["metrics"][f"val/certified_acc@{eps:g}"] == pytest.approx(expected)
    assert rank0["metrics"]["val/loss"] == pytest.approx(rank1["metrics"]["val/loss"])


def test_ddp_checkpoint_resumes_in_ddp_and_in_one_process(runs: dict) -> None:
    checkpoint = torch.load(runs["checkpoint"], weights_only=False)
    assert checkpoint["global_step"] == 3
    assert checkpoint["epoch"] == 0
    saved = runs["ddp"][0]["last"]
    for name, value in checkpoint["state_dict"].items():
        assert torch.equal(
            value, saved[f"param:{name}"] if f"param:{name}" in saved else saved[f"buffer:{name}"]
        )
    single, ddp = runs["resumed_single"][0], runs["resumed_ddp"][0]
    for record in (single, ddp):
        assert record["global_step"] == 6
        assert record["epoch"] == 2
        assert len(record["losses"]) == 3  # steps 4 to 6 only: training continued, not restarted
    # Same checkpoint, same global batches: the resumed runs agree (optimizer momentum restored too).
    torch.testing.assert_close(torch.tensor(ddp["losses"]), torch.tensor(single["losses"]), atol=1e-5, rtol=0)
    _assert_states_close(ddp["last"], single["last"], atol=1e-5)
    # ...and they continued from the checkpoint (weights and soft-hKR running mean), not from their own
    # initialization: step 4 is the first global batch of epoch 2 seen by the checkpointed model.
    images, labels = PairedDataModule(8).train_set[:8]
    fresh = make_model(seed=1)
    expected_without_resume = float(fresh.compute_loss(fresh(images), labels)["loss"])
    fresh.load_state_dict(checkpoint["state_dict"])
    expected = float(fresh.compute_loss(fresh(images), labels)["loss"])
    assert abs(expected - expected_without_resume) > 1e-2
    assert single["losses"][0] == pytest.approx(expected, abs=1e-5)
    assert ddp["losses"][0] == pytest.approx(expected, abs=1e-5)


def test_the_straightness_penalty_keeps_ddp_equal_to_one_process(tmp_path: Path) -> None:
    """Its input gradient and second forward pass run inside DDP's forward; its mean is global."""
    with pytest.MonkeyPatch.context() as patch:
        for name in LAUNCH_VARIABLES:
            patch.delenv(name, raising=False)
        patch.setenv(STRAIGHTNESS_VARIABLE, "1.0")
        ddp = _fit(tmp_path / "ddp", devices=2, max_epochs=1)
        single = _fit(tmp_path / "single", devices=1, max_epochs=1)
    assert make_model().straightness_weight == 0.0  # the variable is gone: the other tests train without
    for record in (*ddp, *single):
        assert record["metrics"]["train/straightness_epoch"] > 0
    # the penalty is a mean over the global batch: every rank logs the one-process value
    assert ddp[0]["metrics"]["train/straightness_epoch"] == pytest.approx(
        single[0]["metrics"]["train/straightness_epoch"], abs=1e-5
    )
    torch.testing.assert_close(
        torch.tensor(ddp[0]["losses"]), torch.tensor(single[0]["losses"]), atol=1e-5, rtol=0
    )
    _assert_states_close(ddp[0]["last"], single[0]["last"], atol=1e-5)
    _assert_states_close(ddp[1]["last"], single[0]["last"], atol=1e-5)
