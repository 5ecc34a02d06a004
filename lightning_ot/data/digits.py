"""The 8x8 handwritten digits that ship with scikit-learn (1,797 images, 10 classes, no download)."""

from __future__ import annotations

from collections.abc import Sequence

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from lightning_ot.data._classes import check_classes, select_classes
from lightning_ot.data.sampling import resumable_loader

__all__ = ["DigitsDataModule"]


class DigitsDataModule(pl.LightningDataModule):
    """scikit-learn's 8x8 digits as (B, 1, 8, 8) float images in [0, 1].

    Args:
        classes: the digits to keep, ``None`` for all ten. Their labels become 0, 1, ... in the order
            given; two classes make a binary task (e.g. ``[0, 8]``: label 1 means an 8).
        batch_size: samples per batch.
        val_fraction: fraction held out for validation, stratified by class.
        seed: seed of the train/validation split and of the shuffle (each epoch's order is a function
            of ``seed`` and the epoch, and the position inside an epoch is checkpointed: a resumed run
            sees the batches of the uninterrupted one).
        num_workers: DataLoader workers (0 is fastest for data this small).

    Example:
        >>> data = DigitsDataModule(classes=[0, 8])
        >>> data.setup("fit")
        >>> data.num_classes, data.train_dataset[0][0].shape
        (2, torch.Size([1, 8, 8]))
    """

    image_shape = (1, 8, 8)

    def __init__(
        self,
        classes: Sequence[int] | None = None,
        batch_size: int = 64,
        val_fraction: float = 0.2,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"`val_fraction` must be in (0, 1), got {val_fraction}")
        if batch_size < 1:
            raise ValueError(f"`batch_size` must be >= 1, got {batch_size}")
        self.classes = check_classes(classes)
        self.batch_size = batch_size
        self.val_fraction = val_fraction
        self.seed = seed
        self.num_workers = num_workers
        self.train_dataset: TensorDataset | None = None
        self.val_dataset: TensorDataset | None = None

    @property
    def num_classes(self) -> int:
        return 10 if self.classes is None else len(self.classes)

    def setup(self, stage: str | None = None) -> None:
        if self.train_dataset is not None:
            return
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        digits = load_digits()
        images = digits.images.astype(np.float32) / 16.0
        labels = digits.target.astype(np.int64)
        if self.classes is not None:
            images, labels = select_classes(images, labels, self.classes)
        train_x, val_x, train_y, val_y = train_test_split(
            images, labels, test_size=self.val_fraction, random_state=self.seed, stratify=labels
        )
        self.train_dataset = TensorDataset(torch.from_numpy(train_x)[:, None], torch.from_numpy(train_y))
        self.val_dataset = TensorDataset(torch.from_numpy(val_x)[:, None], torch.from_numpy(val_y))

    def train_dataloader(self) -> DataLoader:
        assert self.train_dataset is not None, "call setup() first"
        return resumable_loader(
            self.train_dataset,
            self.batch_size,
            self.seed,
            trainer=self.trainer,
            drop_last=len(self.train_dataset) > self.batch_size,
            num_workers=self.num_workers,
        )

    def val_dataloader(self) -> DataLoader:
        assert self.val_dataset is not None, "call setup() first"
        return DataLoader(self.val_dataset, batch_size=256, num_workers=self.num_workers)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()

    def predict_dataloader(self) -> DataLoader:
        """The validation set, in order (``python -m lightning_ot predict`` writes one row per image)."""
        return self.val_dataloader()
