"""A LightningDataModule of the user's own: scikit-learn's two interleaving half-moons in 2-D."""

from __future__ import annotations

import lightning.pytorch as pl
import numpy as np
import torch
from sklearn.datasets import make_moons
from torch.utils.data import DataLoader, TensorDataset


class TwoMoonsDataModule(pl.LightningDataModule):
    """Two classes of 2-D points; labels 0 and 1 (the binary hKR loss maps them to -1 and +1).

    Args:
        num_samples: points generated in all (train and validation together).
        noise: standard deviation of the Gaussian noise added to the moons.
        val_fraction: fraction held out for validation.
        batch_size: samples per training batch.
        seed: seed of the generation and of the split.
    """

    num_classes = 2

    def __init__(
        self,
        num_samples: int = 2000,
        noise: float = 0.1,
        val_fraction: float = 0.25,
        batch_size: int = 128,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"`val_fraction` must be in (0, 1), got {val_fraction}")
        self.save_hyperparameters()
        self.train_dataset: TensorDataset | None = None
        self.val_dataset: TensorDataset | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.train_dataset is not None:
            return
        points, labels = make_moons(
            self.hparams.num_samples, noise=self.hparams.noise, random_state=self.hparams.seed
        )
        order = np.random.default_rng(self.hparams.seed).permutation(len(points))
        points = torch.from_numpy(points[order].astype(np.float32))
        labels = torch.from_numpy(labels[order])
        num_val = round(self.hparams.val_fraction * len(points))
        self.val_dataset = TensorDataset(points[:num_val], labels[:num_val])
        self.train_dataset = TensorDataset(points[num_val:], labels[num_val:])

    def train_dataloader(self) -> DataLoader:
        generator = torch.Generator().manual_seed(self.hparams.seed)
        return DataLoader(
            self.train_dataset,
            batch_size=self.hparams.batch_size,
            shuffle=True,
            drop_last=True,
            generator=generator,
        )

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_dataset, batch_size=1024)
