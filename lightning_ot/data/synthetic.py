"""Random images of any shape and class count: smoke tests of recipes and benchmarks, no files."""

from __future__ import annotations

from collections.abc import Sequence

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from lightning_ot.data.sampling import resumable_loader

__all__ = ["SyntheticImageDataModule"]


class SyntheticImageDataModule(pl.LightningDataModule):
    """Images (B, C, H, W) in [0, 1] whose brightness depends on the class (a learnable task).

    Use it to check that a recipe's backbone, loss and strategy run before the real data is in place:
    ``python -m lightning_ot.fit --recipe imagenet --data lightning_ot.data.SyntheticImageDataModule
    --data.image_shape [3,64,64] --data.num_classes 1000``.

    Args:
        image_shape: ``(channels, height, width)``.
        num_classes: number of classes (labels 0 .. num_classes - 1).
        num_samples: training samples (validation gets a quarter, at least one batch).
        batch_size: samples per batch.
        seed: seed of the generated data and of the shuffle (each epoch's order is a function of
            ``seed`` and the epoch: a resumed run sees the batches of the uninterrupted one).

    Example:
        >>> data = SyntheticImageDataModule((3, 8, 8), num_classes=4, num_samples=16, batch_size=4)
        >>> data.setup("fit")
        >>> images, labels = next(iter(data.train_dataloader()))
        >>> images.shape, labels.dtype, data.num_classes
        (torch.Size([4, 3, 8, 8]), torch.int64, 4)
    """

    def __init__(
        self,
        image_shape: Sequence[int] = (3, 32, 32),
        num_classes: int = 10,
        num_samples: int = 256,
        batch_size: int = 32,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if len(image_shape) != 3 or any(int(size) < 1 for size in image_shape):
            raise ValueError(f"`image_shape` must be (channels, height, width), got {list(image_shape)}")
        if num_classes < 2:
            raise ValueError(f"`num_classes` must be >= 2, got {num_classes}")
        if num_samples < 1 or batch_size < 1:
            raise ValueError(f"`num_samples` and `batch_size` must be >= 1, got {num_samples}, {batch_size}")
        self.image_shape = tuple(int(size) for size in image_shape)
        self.num_classes = num_classes
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.seed = seed
        self.train_dataset: TensorDataset | None = None
        self.val_dataset: TensorDataset | None = None

    def _make(self, count: int, generator: torch.Generator) -> TensorDataset:
        labels = torch.randint(0, self.num_classes, (count,), generator=generator)
        noise = torch.rand(count, *self.image_shape, generator=generator)
        level = (labels.float() + 0.5) / self.num_classes
        images = (0.5 * noise + 0.5 * level[:, None, None, None]).clamp(0.0, 1.0)
        return TensorDataset(images, labels)

    def setup(self, stage: str | None = None) -> None:
        if self.train_dataset is not None:
            return
        generator = torch.Generator().manual_seed(self.seed)
        self.train_dataset = self._make(self.num_samples, generator)
        self.val_dataset = self._make(max(self.batch_size, self.num_samples // 4), generator)

    def train_dataloader(self) -> DataLoader:
        assert self.train_dataset is not None, "call setup() first"
        return resumable_loader(self.train_dataset, self.batch_size, self.seed, trainer=self.trainer)

    def val_dataloader(self) -> DataLoader:
        assert self.val_dataset is not None, "call setup() first"
        return DataLoader(self.val_dataset, batch_size=self.batch_size)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()

    def predict_dataloader(self) -> DataLoader:
        """The validation set, in order."""
        return self.val_dataloader()
