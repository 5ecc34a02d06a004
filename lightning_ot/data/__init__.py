"""Lightning data modules and dataset readers (PIL, kornia and the standard library; no torchvision).

Every data module yields ``(images, labels)`` batches, images ``(B, C, H, W)`` float32 in [0, 1]
(not normalized: put a :class:`~lightning_ot.nn.Normalize` layer in the backbone so certificates see
it) and labels ``(B,)`` int64, and exposes ``num_classes``.
"""

from lightning_ot.data.digits import DigitsDataModule
from lightning_ot.data.idx import FashionMNISTDataModule, MNISTDataModule, read_idx
from lightning_ot.data.images import (
    IMAGE_EXTENSIONS,
    CatsVsDogsDataModule,
    CelebADataModule,
    DatasetLayoutError,
    ImageDataModule,
    ImageFolderDataModule,
    ImageFolderDataset,
    ImageListDataset,
    ImageNetDataModule,
    load_image,
    make_augmentation,
)
from lightning_ot.data.mnist5k import MNIST5kDataModule, load_mnist5k
from lightning_ot.data.shards import (
    ShardedImageDataModule,
    ShardedImageDataset,
    count_shard_samples,
    write_shards,
)
from lightning_ot.data.synthetic import SyntheticImageDataModule

__all__ = [
    "IMAGE_EXTENSIONS",
    "CatsVsDogsDataModule",
    "CelebADataModule",
    "DatasetLayoutError",
    "DigitsDataModule",
    "FashionMNISTDataModule",
    "ImageDataModule",
    "ImageFolderDataModule",
    "ImageFolderDataset",
    "ImageListDataset",
    "ImageNetDataModule",
    "MNIST5kDataModule",
    "MNISTDataModule",
    "ShardedImageDataModule",
    "ShardedImageDataset",
    "SyntheticImageDataModule",
    "count_shard_samples",
    "load_image",
    "load_mnist5k",
    "make_augmentation",
    "read_idx",
    "write_shards",
]
