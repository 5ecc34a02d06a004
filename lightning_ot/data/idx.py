"""MNIST and Fashion-MNIST from their published IDX files (gzipped or not), no torchvision."""

from __future__ import annotations

import gzip
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import TensorDataset

from lightning_ot.data._classes import check_classes, select_classes
from lightning_ot.data.images import Augmentation, DatasetLayoutError, ImageDataModule

__all__ = ["FashionMNISTDataModule", "MNISTDataModule", "read_idx"]

_IDX_DTYPES = {
    0x08: np.uint8,
    0x09: np.int8,
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_LAYOUT = (
    "  ROOT/train-images-idx3-ubyte[.gz]   ROOT/train-labels-idx1-ubyte[.gz]\n"
    "  ROOT/t10k-images-idx3-ubyte[.gz]    ROOT/t10k-labels-idx1-ubyte[.gz]"
)


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (the MNIST format: magic ``0 0 TYPE NDIM``, big-endian sizes, then the data).

    Files ending in ``.gz`` are decompressed.

    Raises:
        DatasetLayoutError: the file does not exist.
        ValueError: the file is not a valid IDX file (the message names it).

    Example:
        >>> import tempfile, struct
        >>> path = tempfile.NamedTemporaryFile(suffix="-idx1-ubyte", delete=False).name
        >>> _ = open(path, "wb").write(struct.pack(">BBBBI", 0, 0, 8, 1, 3) + bytes([7, 2, 1]))
        >>> read_idx(path)
        array([7, 2, 1], dtype=uint8)
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetLayoutError(f"IDX file not found: {path}\nexpected layout:\n{_LAYOUT}")
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as file:
            data = file.read()
    except (OSError, EOFError) as error:
        raise ValueError(f"cannot read the IDX file {path}: {error}") from error
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an IDX file (bad magic number {data[:4].hex() or 'empty'})")
    ndim = data[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(data[4 + 4 * axis : 8 + 4 * axis], "big") for axis in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    expected = header + int(np.prod(shape)) * dtype.itemsize
    if len(data) != expected:
        raise ValueError(
            f"{path} is truncated or corrupt: shape {shape} needs {expected} bytes, found {len(data)}"
        )
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def _find(root: Path, name: str) -> Path:
    for candidate in (root / name, root / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    raise DatasetLayoutError(f"IDX file {name}[.gz] not found in {root}\nexpected layout:\n{_LAYOUT}")


class MNISTDataModule(ImageDataModule):
    """MNIST from the four IDX files of its distribution: images (B, 1, 28, 28) in [0, 1].

    The official test set (``t10k-*``) is the validation and test set, as in the papers.

    Args:
        root: folder with the four IDX files (``.gz`` or not).
        classes: the digits to keep, ``None`` for all ten; their labels become 0, 1, ... in the order
            given (``[0, 8]``: label 1 means an 8, a binary task).
        **kwargs: see :class:`~lightning_ot.data.ImageDataModule` (``batch_size``, ``num_workers``,
            ``augmentation``, ...). Images are held in memory; ``num_workers=0`` is fastest.
    """

    num_train = 60000
    image_size = (28, 28)
    class_names: tuple[str, ...] = tuple(str(digit) for digit in range(10))

    def __init__(
        self,
        root: str | Path,
        classes: Sequence[int] | None = None,
        batch_size: int = 128,
        num_workers: int = 0,
        augmentation: Augmentation = "none",
        **kwargs: Any,
    ) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers, augmentation=augmentation, **kwargs)
        self.root = Path(root)
        if not self.root.is_dir():
            raise DatasetLayoutError(
                f"{type(self).__name__} folder not found: {self.root}\nexpected layout:\n{_LAYOUT}"
            )
        for images, labels in _FILES.values():
            _find(self.root, images), _find(self.root, labels)
        self.classes = check_classes(classes)
        if self.classes is not None:
            self.class_names = tuple(type(self).class_names[label] for label in self.classes)

    @property
    def num_classes(self) -> int:  # type: ignore[override]
        return 10 if self.classes is None else len(self.classes)

    def _load(self, split: str) -> TensorDataset:
        image_file, label_file = (_find(self.root, name) for name in _FILES[split])
        images, labels = read_idx(image_file), read_idx(label_file)
        if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
            raise ValueError(
                f"{image_file} ({images.shape}) and {label_file} ({labels.shape}) do not match: expected "
                "(N, H, W) images and (N,) labels"
            )
        labels = labels.astype(np.int64)
        if self.classes is not None:
            images, labels = select_classes(images, labels, self.classes)
        return TensorDataset(torch.from_numpy(images.copy())[:, None], torch.from_numpy(labels))

    def setup(self, stage: str | None = None) -> None:
        if self.train_dataset is not None:
            return
        self.train_dataset = self._load("train")
        self.val_dataset = self.test_dataset = self._load("test")


class FashionMNISTDataModule(MNISTDataModule):
    """Fashion-MNIST (Xiao et al. 2017): same IDX files and layout as MNIST, ten clothing classes."""

    class_names = (
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    )
