"""Lightning checkpoints written when OrthogonalLinear used ``torch.nn.utils.parametrize`` still resume."""

from __future__ import annotations

from pathlib import Path

import torch

from tests.ddp._lightning_helpers import fit


def test_checkpoint_in_the_parametrized_layout_resumes_like_the_current_one(tmp_path: Path) -> None:
    fit(tmp_path / "first", devices=1, max_epochs=1)
    checkpoint = torch.load(tmp_path / "first" / "last.ckpt", weights_only=False)
    # the layout of earlier versions: `<layer>.parametrizations.weight.original`, after the bias
    old_state = {
        key.replace("weight_orig", "parametrizations.weight.original"): value
        for key, value in checkpoint["state_dict"].items()
    }
    assert sum("parametrizations" in key for key in old_state) == 3
    checkpoint["state_dict"] = old_state
    torch.save(checkpoint, tmp_path / "old.ckpt")
    # resumed with seed 1: everything must come from the checkpoint, the optimizer states included
    fit(tmp_path / "old", devices=1, max_epochs=2, ckpt_path=tmp_path / "old.ckpt", seed=1)
    fit(tmp_path / "new", devices=1, max_epochs=2, ckpt_path=tmp_path / "first" / "last.ckpt", seed=1)
    old, new = (torch.load(tmp_path / run / "rank0.pt") for run in ("old", "new"))
    assert old["global_step"] == new["global_step"] == 6
    assert old["losses"] == new["losses"]
    for name, value in new["last"].items():
        assert torch.equal(old["last"][name], value), name
