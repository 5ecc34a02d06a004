"""Uninterrupted, stopped and resumed fits of the quickstart data with a small MLP, for the resume tests.

``python -m tests.ddp._resume_runs OUT_DIR DEVICES`` runs them all in one launch (under DDP Lightning
re-launches this script once per extra rank and every rank runs the same fits in turn) and writes
``OUT_DIR/NAME_rank{r}.pt`` for every fit NAME (:data:`RESUMED` and ``"uninterrupted"``).
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_ot import OTClassifier
from lightning_ot.data import DigitsDataModule
from lightning_ot.losses import SoftHKRLoss
from lightning_ot.models import LipschitzMLP

GLOBAL_BATCH = 64
STEPS_PER_EPOCH = 22  # 1,437 training digits in batches of 64, the last incomplete one dropped
MAX_EPOCHS = 3
MID_EPOCH_STEP = 30  # batch 8 of epoch 1
EPOCH_END_STEP = 2 * STEPS_PER_EPOCH
# Fits resumed from: the checkpoint of a fit stopped by `max_steps` in the middle of an epoch, the one
# `trainer.save_checkpoint` writes after it, the one of a fit stopped at the end of an epoch, and the
# one `ModelCheckpoint(every_n_train_steps=...)` writes in the middle of the uninterrupted fit.
RESUMED = ("stopped_mid_epoch", "saved_after_fit", "stopped_at_epoch_end", "saved_mid_epoch")


def make_model(seed: int) -> OTClassifier:
    torch.manual_seed(seed)
    return OTClassifier(
        # 48 wide: each DDP rank's 32 rows are fewer than min(64, 48), so the first layer takes its
        # projected gradient from the batch (in one process, 64 rows, from the whole gradient)
        LipschitzMLP(64, 10, hidden_features=(48,)),
        num_classes=10,
        loss=SoftHKRLoss(margin=0.5, hinge_weight=10.0, temperature=10.0, momentum=0.9),
        optimizer=functools.partial(torch.optim.Adam, lr=2e-3),
        lr_scheduler=functools.partial(torch.optim.lr_scheduler.CosineAnnealingLR, T_max=MAX_EPOCHS),
        certified_eps=(0.1, 0.5),
        retraction_steps=1,  # training then uses the retracted matrices: a resume must too
    )


def _trainer(devices: int, callbacks: list[pl.Callback], max_steps: int = -1) -> pl.Trainer:
    return pl.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy="ddp" if devices > 1 else "auto",
        max_epochs=MAX_EPOCHS,
        max_steps=max_steps,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
    )


def _record(trainer: pl.Trainer, model: OTClassifier) -> dict[str, Any]:
    scheduler = trainer.lr_scheduler_configs[0].scheduler
    return {
        "parameters_and_buffers": {
            **{name: value.detach().clone() for name, value in model.named_parameters()},
            **{name: value.detach().clone() for name, value in model.named_buffers()},
        },
        "optimizer": trainer.optimizers[0].state_dict(),
        "scheduler": scheduler.state_dict(),
        "global_step": trainer.global_step,
        "world_size": trainer.world_size,
    }


def _fit(
    out_dir: Path, name: str, devices: int, seed: int, ckpt_path: Path | None = None, **kwargs: Any
) -> Any:
    callbacks = kwargs.pop("callbacks", [])
    checkpoint = ModelCheckpoint(dirpath=out_dir / name, filename="last", enable_version_counter=False)
    trainer = _trainer(devices, [*callbacks, checkpoint], **kwargs)
    model = make_model(seed)
    trainer.fit(model, DigitsDataModule(batch_size=GLOBAL_BATCH // devices), ckpt_path=ckpt_path)
    torch.save(_record(trainer, model), out_dir / f"{name}_rank{trainer.global_rank}.pt")
    return trainer


def run_all(out_dir: Path, devices: int) -> None:
    """The uninterrupted fit, the stopped fits and the fits resumed from their checkpoints."""
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    every_30 = ModelCheckpoint(
        dirpath=out_dir / "every_30", every_n_train_steps=MID_EPOCH_STEP, save_top_k=-1
    )
    _fit(out_dir, "uninterrupted", devices, seed=0, callbacks=[every_30])
    stopped = _fit(out_dir, "stop_mid", devices, seed=0, max_steps=MID_EPOCH_STEP)
    stopped.save_checkpoint(out_dir / "saved_after_fit.ckpt")
    _fit(out_dir, "stop_end", devices, seed=0, max_steps=EPOCH_END_STEP)
    checkpoints = {
        "stopped_mid_epoch": out_dir / "stop_mid" / "last.ckpt",
        "saved_after_fit": out_dir / "saved_after_fit.ckpt",
        "stopped_at_epoch_end": out_dir / "stop_end" / "last.ckpt",
        "saved_mid_epoch": out_dir / "every_30" / f"epoch=1-step={MID_EPOCH_STEP}.ckpt",
    }
    # Resumed fits start from another initialization: the checkpoint must overwrite all of it.
    for name, checkpoint in checkpoints.items():
        _fit(out_dir, name, devices, seed=1, ckpt_path=checkpoint)


if __name__ == "__main__":
    run_all(Path(sys.argv[1]), int(sys.argv[2]))
