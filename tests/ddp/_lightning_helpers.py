"""Data, model and recording callback for the Lightning DDP tests, and the script they launch.

``python -m tests.ddp._lightning_helpers OUT_DIR DEVICES MAX_EPOCHS [CKPT SEED]`` fits
:func:`make_model` on :class:`PairedDataModule` with ``LipschitzDDPStrategy`` (Lightning re-launches
this script once per extra rank, as under ``torchrun``) and records every rank with :class:`Recorder`.
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from lightning_ot import OTClassifier
from lightning_ot.losses import SoftHKRLoss
from lightning_ot.models import LipschitzMLP
from lightning_ot.strategies import LipschitzDDPStrategy

#: Environment variable (inherited by the ranks Lightning launches) giving ``make_model`` a
#: ``straightness_weight``.
STRAIGHTNESS_VARIABLE = "LIGHTNING_OT_TEST_STRAIGHTNESS_WEIGHT"

TRAIN_SIZE = 24
VAL_POINTS = 5
CERTIFIED_EPS = (0.01, 0.05)


class PairedDataModule(pl.LightningDataModule):
    """Two classes of (1, 4, 4) images; the training order is fixed (no shuffling).

    The validation set holds each of ``VAL_POINTS`` images twice, first with its label, then with the
    other label. Under DDP without shuffling, rank 0 sees the even rows and rank 1 the odd ones, so the
    synced accuracy is exactly 0.5 while each rank alone sees k / VAL_POINTS, which cannot be 0.5.
    """

    num_classes = 2

    def __init__(self, batch_size: int) -> None:
        super().__init__()
        self.batch_size = batch_size
        generator = torch.Generator().manual_seed(0)
        labels = torch.arange(TRAIN_SIZE) % 2
        labels[::3] = 1 - labels[::3]  # uneven class counts within every batch
        images = torch.rand(TRAIN_SIZE, 1, 4, 4, generator=generator) + 0.8 * labels[:, None, None, None]
        self.train_set = TensorDataset(images, labels)
        points = torch.rand(VAL_POINTS, 1, 4, 4, generator=generator)
        truth = torch.arange(VAL_POINTS) % 2
        self.val_points = points
        self.val_set = TensorDataset(
            points.repeat_interleave(2, 0), torch.stack([truth, 1 - truth], 1).reshape(-1)
        )

    def train_dataloader(self) -> DataLoader:
        # Lightning shuffles a training set it shards itself: shard it in order instead, so that the
        # global batch k is rows [k * B, (k + 1) * B) whatever the number of processes.
        sampler = None
        if self.trainer is not None and self.trainer.world_size > 1:
            sampler = DistributedSampler(
                self.train_set, self.trainer.world_size, self.trainer.global_rank, shuffle=False
            )
        return DataLoader(self.train_set, batch_size=self.batch_size, sampler=sampler)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=VAL_POINTS)


def make_model(seed: int = 0) -> OTClassifier:
    torch.manual_seed(seed)
    return OTClassifier(
        LipschitzMLP(16, 2, hidden_features=(8, 8), normalize_mean=[0.5], normalize_std=[0.5]),
        num_classes=2,
        loss=SoftHKRLoss(margin=0.5, hinge_weight=5.0, temperature=10.0, momentum=0.5),
        optimizer=functools.partial(torch.optim.SGD, lr=0.05, momentum=0.9),
        certified_eps=CERTIFIED_EPS,
        straightness_weight=float(os.environ.get(STRAIGHTNESS_VARIABLE, "0")),
    )


def model_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and every buffer (persistent or not) by name."""
    state = {f"param:{name}": value.detach().clone() for name, value in module.named_parameters()}
    state.update({f"buffer:{name}": value.detach().clone() for name, value in module.named_buffers()})
    return state


class Recorder(pl.Callback):
    """Writes, per rank, the global-batch loss of every step, the state after the first step and at the
    end, the global step and the callback metrics, to ``out_dir/rank{r}.pt``."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir
        self.losses: list[float] = []
        self.first: dict[str, torch.Tensor] = {}

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, *args: Any
    ) -> None:
        loss = trainer.strategy.reduce(outputs["loss"].detach().clone(), reduce_op="mean")
        self.losses.append(float(loss))
        if not self.first:
            self.first = model_state(pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        record = {
            "losses": self.losses,
            "first": self.first,
            "last": model_state(pl_module),
            "global_step": trainer.global_step,
            "epoch": trainer.current_epoch,
            "metrics": {name: float(value) for name, value in trainer.callback_metrics.items()},
            "world_size": trainer.world_size,
        }
        torch.save(record, Path(self.out_dir) / f"rank{trainer.global_rank}.pt")


def fit(out_dir: Path, devices: int, max_epochs: int, ckpt_path: Path | None = None, seed: int = 0) -> None:
    """Fit with the global batch ``2 * LOCAL_BATCH`` split over ``devices`` processes."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    out_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy=LipschitzDDPStrategy() if devices > 1 else "auto",
        max_epochs=max_epochs,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[
            Recorder(str(out_dir)),
            ModelCheckpoint(dirpath=out_dir, filename="last", enable_version_counter=False),
        ],
    )
    trainer.fit(make_model(seed), PairedDataModule(2 * LOCAL_BATCH // devices), ckpt_path=ckpt_path)


LOCAL_BATCH = 4

if __name__ == "__main__":
    arguments = sys.argv[1:]
    fit(
        Path(arguments[0]),
        devices=int(arguments[1]),
        max_epochs=int(arguments[2]),
        ckpt_path=Path(arguments[3]) if len(arguments) > 3 else None,
        seed=int(arguments[4]) if len(arguments) > 4 else 0,
    )
