"""``strategy="ddp_spawn"``: the model is pickled to 2 spawned CPU processes (gloo) and trained there."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from tests.ddp._lightning_helpers import LOCAL_BATCH, PairedDataModule, Recorder, fit, make_model, model_state
from tests.ddp.test_lightning_ddp import LAUNCH_VARIABLES

pytestmark = pytest.mark.slow


def test_ddp_spawn_fit_equals_one_process_on_the_global_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in LAUNCH_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = make_model()
        initial = model_state(model)
        trainer = pl.Trainer(
            accelerator="cpu",
            devices=2,
            strategy="ddp_spawn",
            max_epochs=1,
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            enable_checkpointing=False,
            num_sanity_val_steps=0,
            callbacks=[Recorder(str(tmp_path / "spawn"))],
        )
        (tmp_path / "spawn").mkdir()
        trainer.fit(model, PairedDataModule(LOCAL_BATCH))
        fit(tmp_path / "single", devices=1, max_epochs=1)
    finally:
        torch.set_num_threads(threads)
    rank0, rank1 = (torch.load(tmp_path / "spawn" / f"rank{rank}.pt") for rank in range(2))
    single = torch.load(tmp_path / "single" / "rank0.pt")
    assert rank0["world_size"] == 2
    assert rank0["global_step"] == single["global_step"] == 3
    for name, value in rank0["last"].items():
        assert torch.equal(value, rank1["last"][name]), name
        torch.testing.assert_close(value, single["last"][name], atol=1e-5, rtol=0, msg=name)
    # the trained weights come back to the model of the launching process
    final = model_state(model)
    for name, value in rank0["last"].items():
        torch.testing.assert_close(final[name], value, atol=0, rtol=0, msg=name)
    assert (
        max((final[name] - initial[name]).abs().max() for name in final if name.startswith("param:")) > 1e-3
    )
