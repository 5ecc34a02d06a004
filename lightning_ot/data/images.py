"""Image datasets read from local files with PIL (no torchvision), and their data modules.

Workers decode and resize to ``uint8`` tensors (4x less to copy than float); the data module converts
them to float in [0, 1] after the batch reached the device and applies augmentations there, batched,
with kornia (:meth:`ImageDataModule.on_after_batch_transfer`). Images are *not* normalized: put a
:class:`~lightning_ot.nn.Normalize` layer at the start of the backbone, so that certificates account for
it (it multiplies the Lipschitz constant by ``1 / min(std)``).

Every data module yields batches ``(images, labels)``: images ``(B, C, H, W)`` float32 in [0, 1],
labels ``(B,)`` int64, and exposes ``num_classes``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset

from lightning_ot.data.sampling import epoch_seed, resumable_loader

__all__ = [
    "IMAGE_EXTENSIONS",
    "Augmentation",
    "CatsVsDogsDataModule",
    "CelebADataModule",
    "DatasetLayoutError",
    "ImageDataModule",
    "ImageFolderDataModule",
    "ImageFolderDataset",
    "ImageListDataset",
    "ImageNetDataModule",
    "load_image",
    "make_augmentation",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
Augmentation = Literal["none", "shift", "flip", "crop_flip", "resized_crop_flip"]
Resize = Literal["stretch", "center_crop", "shorter_side"]


class DatasetLayoutError(FileNotFoundError):
    """A data folder is missing or does not have the expected layout (the message says which)."""


def _layout_error(path: Path, problem: str, expected: str) -> DatasetLayoutError:
    return DatasetLayoutError(f"{problem}: {path}\nexpected layout:\n{expected}")


def load_image(
    path: str | Path,
    image_size: int | Sequence[int] | None = None,
    channels: int = 3,
    resize: Resize = "center_crop",
) -> Tensor:
    """Decode an image file with PIL into a ``(channels, H, W)`` uint8 tensor.

    Args:
        path: the image file (any format PIL reads).
        image_size: output ``size`` or ``(height, width)``; ``None`` keeps the file's size.
        channels: 3 (RGB) or 1 (grayscale).
        resize: ``"center_crop"`` scales the shorter side to the target then crops the center (keeps
            the aspect ratio), ``"stretch"`` resizes to the target directly, ``"shorter_side"`` only
            scales the shorter side to ``image_size`` (an int) and keeps the aspect ratio.

    Example:
        >>> import tempfile, PIL.Image
        >>> file = tempfile.NamedTemporaryFile(suffix=".png", delete=False).name
        >>> PIL.Image.new("RGB", (40, 30), "red").save(file)
        >>> load_image(file, 16).shape
        torch.Size([3, 16, 16])
    """
    from PIL import Image, UnidentifiedImageError

    if channels not in (1, 3):
        raise ValueError(f"`channels` must be 1 or 3, got {channels}")
    try:
        with Image.open(path) as image:
            image = image.convert("RGB" if channels == 3 else "L")
            if image_size is not None:
                image = _resize(image, image_size, resize)
            array = np.asarray(image, dtype=np.uint8)
    except (OSError, UnidentifiedImageError) as error:
        raise OSError(f"cannot decode the image file {path}: {error}") from error
    if array.ndim == 2:
        array = array[:, :, None]
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


def _resize(image: Any, image_size: int | Sequence[int], resize: Resize) -> Any:
    from PIL import Image

    width, height = image.size
    if resize == "shorter_side":
        if not isinstance(image_size, int):
            raise ValueError(f"resize='shorter_side' needs an int `image_size`, got {image_size}")
        scale = image_size / min(width, height)
        return image.resize((max(1, round(width * scale)), max(1, round(height * scale))), Image.BILINEAR)
    target_height, target_width = (image_size, image_size) if isinstance(image_size, int) else image_size
    if resize == "stretch":
        return image.resize((target_width, target_height), Image.BILINEAR)
    if resize != "center_crop":
        raise ValueError(f"`resize` must be 'stretch', 'center_crop' or 'shorter_side', got {resize!r}")
    scale = max(target_width / width, target_height / height)
    scaled_width, scaled_height = (
        max(target_width, round(width * scale)),
        max(target_height, round(height * scale)),
    )
    image = image.resize((scaled_width, scaled_height), Image.BILINEAR)
    left, top = (scaled_width - target_width) // 2, (scaled_height - target_height) // 2
    return image.crop((left, top, left + target_width, top + target_height))


class ImageListDataset(Dataset):
    """Images given as a list of files with their labels, decoded by :func:`load_image`.

    Args:
        files: image paths.
        labels: one int label per file.
        image_size, channels, resize: see :func:`load_image`.

    Item:
        ``(image, label)``: ``(channels, H, W)`` uint8 tensor and a 0-d int64 tensor.
    """

    def __init__(
        self,
        files: Sequence[str | Path],
        labels: Sequence[int],
        image_size: int | Sequence[int] | None,
        channels: int = 3,
        resize: Resize = "center_crop",
    ) -> None:
        if len(files) != len(labels):
            raise ValueError(f"got {len(files)} files but {len(labels)} labels")
        self.files = [str(file) for file in files]
        self.labels = torch.as_tensor(list(labels), dtype=torch.int64)
        self.image_size = image_size
        self.channels = channels
        self.resize = resize

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        image = load_image(self.files[index], self.image_size, self.channels, self.resize)
        return image, self.labels[index]


def _list_images(folder: Path) -> list[Path]:
    return sorted(
        path for path in folder.iterdir() if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file()
    )


class ImageFolderDataset(ImageListDataset):
    """One sub-folder per class (``root/CLASS/*.jpg``); classes sorted by name get labels 0, 1, ...

    Args:
        root: the folder holding one sub-folder per class.
        image_size, channels, resize: see :func:`load_image`.
        classes: the class folder names to use, in label order (default: every sub-folder, sorted).

    Raises:
        DatasetLayoutError: ``root`` is missing, has no class folder, or a class folder has no image.
    """

    LAYOUT = "  ROOT/CLASS_A/xxx.jpg\n  ROOT/CLASS_A/yyy.png\n  ROOT/CLASS_B/zzz.jpg\n  ..."

    def __init__(
        self,
        root: str | Path,
        image_size: int | Sequence[int] | None,
        channels: int = 3,
        resize: Resize = "center_crop",
        classes: Sequence[str] | None = None,
    ) -> None:
        root = Path(root)
        if not root.is_dir():
            raise _layout_error(root, "image folder not found", self.LAYOUT)
        found = sorted(
            path.name for path in root.iterdir() if path.is_dir() and not path.name.startswith(".")
        )
        if classes is None:
            classes = found
        missing = [name for name in classes if name not in found]
        if missing or len(classes) < 2:
            raise _layout_error(
                root,
                f"need at least two class folders (missing: {missing or 'none'}, found: {found[:10]})",
                self.LAYOUT,
            )
        files: list[Path] = []
        labels: list[int] = []
        for label, name in enumerate(classes):
            images = _list_images(root / name)
            if not images:
                raise _layout_error(
                    root / name, f"no image file ({', '.join(IMAGE_EXTENSIONS)}) in class folder", self.LAYOUT
                )
            files += images
            labels += [label] * len(images)
        self.classes = list(classes)
        super().__init__(files, labels, image_size, channels, resize)


def make_augmentation(kind: Augmentation, image_size: int | Sequence[int]) -> nn.Module:
    """Batched GPU-side augmentation with kornia, applied to float images in [0, 1].

    ``"shift"``: random translation by up to 1/14 of the image size (2 pixels on 28x28), zero fill, no
    flip (digits and text must not be mirrored); ``"flip"``: random horizontal flip; ``"crop_flip"``: random crop with 4-pixel zero padding (per 32
    pixels) and flip, as for small images; ``"resized_crop_flip"``: random resized crop (scale 0.08-1,
    the ImageNet standard) and flip.

    Example:
        >>> make_augmentation("crop_flip", 8)(torch.rand(2, 3, 8, 8)).shape
        torch.Size([2, 3, 8, 8])
    """
    import kornia.augmentation as augmentation

    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if kind == "none":
        return nn.Identity()
    if kind == "shift":
        return augmentation.RandomCrop(size, padding=max(1, round(size[0] / 14)))
    if kind == "flip":
        return augmentation.RandomHorizontalFlip()
    if kind == "crop_flip":
        padding = max(1, round(4 * size[0] / 32))
        return nn.Sequential(
            augmentation.RandomCrop(size, padding=padding), augmentation.RandomHorizontalFlip()
        )
    if kind == "resized_crop_flip":
        return nn.Sequential(
            augmentation.RandomResizedCrop(size, scale=(0.08, 1.0)), augmentation.RandomHorizontalFlip()
        )
    raise ValueError(f"`augmentation` must be one of {Augmentation.__args__}, got {kind!r}")


def _split(dataset: Dataset, val_fraction: float, seed: int) -> tuple[Subset, Subset]:
    count = len(dataset)  # type: ignore[arg-type]
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed)).tolist()
    val_count = max(1, round(val_fraction * count))
    return Subset(dataset, order[val_count:]), Subset(dataset, order[:val_count])


class ImageDataModule(pl.LightningDataModule):
    """Base of the image data modules: loaders, uint8 -> float on the device, GPU augmentation.

    Subclasses set ``self.train_dataset``, ``self.val_dataset`` (and optionally ``self.test_dataset``)
    in :meth:`setup` and ``num_classes``.

    Args:
        batch_size: samples per batch (per process under DDP).
        num_workers: DataLoader worker processes decoding images.
        augmentation: training augmentation applied on the device (see :func:`make_augmentation`).
        val_batch_size: batch size of validation and test (default ``batch_size``).
        pin_memory: pin host memory (faster copies to a GPU).
        seed: seed of the shuffling, of the augmentation and of any train/validation split.

    Resuming is exact: each epoch's order is a function of ``seed`` and the epoch, the position inside
    an epoch is checkpointed (:func:`~lightning_ot.data.sampling.resumable_loader`), and every
    augmented batch draws from its own seed (``seed``, rank, batch count), which the data module's
    ``state_dict`` keeps.
    """

    num_classes: int
    image_size: int | Sequence[int]

    def __init__(
        self,
        batch_size: int = 128,
        num_workers: int = 4,
        augmentation: Augmentation = "none",
        val_batch_size: int | None = None,
        pin_memory: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"`batch_size` must be >= 1, got {batch_size}")
        if num_workers < 0:
            raise ValueError(f"`num_workers` must be >= 0, got {num_workers}")
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.augmentation_kind = augmentation
        self.val_batch_size = val_batch_size or batch_size
        self.pin_memory = pin_memory
        self.seed = seed
        self.train_dataset: Dataset | None = None
        self.val_dataset: Dataset | None = None
        self.test_dataset: Dataset | None = None
        self._augmentation: nn.Module | None = None
        self.augmented_batches = 0  # batches augmented so far: the seed of the next one

    def _loader(self, dataset: Dataset | None, train: bool, name: str) -> DataLoader:
        if dataset is None:
            raise RuntimeError(f"{type(self).__name__} has no {name} set: call setup() first")
        options: dict[str, Any] = {
            "num_workers": self.num_workers,
            "pin_memory": self.pin_memory and torch.cuda.is_available(),
            "persistent_workers": self.num_workers > 0,
        }
        if train:
            return resumable_loader(
                dataset,
                self.batch_size,
                self.seed,
                trainer=self.trainer,
                drop_last=len(dataset) > self.batch_size,  # type: ignore[arg-type]
                **options,
            )
        return DataLoader(dataset, batch_size=self.val_batch_size, **options)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_dataset, True, "training")

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_dataset, False, "validation")

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_dataset or self.val_dataset, False, "test")

    def predict_dataloader(self) -> DataLoader:
        """The test set (the validation set where there is none), in order."""
        return self._loader(self.test_dataset or self.val_dataset, False, "prediction")

    def augment(self, images: Tensor) -> Tensor:
        """Apply the training augmentation to float images (B, C, H, W) on their device.

        Each call draws from its own seed, a function of ``seed``, the process rank and the number of
        batches augmented before (kept by :meth:`state_dict`), with the global random state left as it
        was: a resumed run augments its batches as the uninterrupted run did.
        """
        if self._augmentation is None:
            self._augmentation = make_augmentation(self.augmentation_kind, self.image_size)
        augmentation = self._augmentation.to(images.device)
        rank = self.trainer.global_rank if self.trainer is not None else 0
        seed = epoch_seed(epoch_seed(self.seed, rank), self.augmented_batches)
        self.augmented_batches += 1
        if images.device.type != "cuda":
            with torch.random.fork_rng(devices=[]):
                torch.default_generator.manual_seed(seed)
                return augmentation(images)
        with torch.cuda.device(images.device), torch.random.fork_rng(devices=[torch.cuda.current_device()]):
            torch.default_generator.manual_seed(seed)
            torch.cuda.manual_seed(seed)
            return augmentation(images)

    def state_dict(self) -> dict[str, Any]:
        return {"augmented_batches": self.augmented_batches}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.augmented_batches = int(state_dict.get("augmented_batches", 0))

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        images, labels = batch[0], batch[1]
        if images.dtype == torch.uint8:
            images = images.float().div_(255.0)
        trainer = self.trainer
        if trainer is not None and trainer.training and self.augmentation_kind != "none":
            images = self.augment(images)
        return images, labels.long()


class ImageFolderDataModule(ImageDataModule):
    """Images in class folders: ``train_dir/CLASS/*.jpg`` and optionally ``val_dir/CLASS/*.jpg``.

    Without ``val_dir``, ``val_fraction`` of ``train_dir`` (a seeded random subset) is held out.

    Args:
        train_dir: folder with one sub-folder per class.
        val_dir: same layout, same class names; ``None`` to split ``train_dir``.
        image_size: ``size`` or ``(height, width)`` of the images fed to the network.
        channels: 3 (RGB) or 1 (grayscale).
        classes: class folder names in label order (default: all, sorted).
        val_fraction: held-out fraction when there is no ``val_dir``.
        resize: how files of other sizes are brought to ``image_size`` (see :func:`load_image`).
        **kwargs: see :class:`ImageDataModule` (``batch_size``, ``num_workers``, ``augmentation`` ...).

    Example:
        >>> import tempfile, PIL.Image, pathlib
        >>> root = pathlib.Path(tempfile.mkdtemp())
        >>> for name in ("cat", "dog"):
        ...     (root / name).mkdir()
        ...     PIL.Image.new("RGB", (20, 20)).save(root / name / "0.png")
        ...     PIL.Image.new("RGB", (20, 20)).save(root / name / "1.png")
        >>> data = ImageFolderDataModule(root, image_size=8, val_fraction=0.5, num_workers=0)
        >>> data.setup("fit")
        >>> data.num_classes, data.classes, len(data.train_dataset), len(data.val_dataset)
        (2, ['cat', 'dog'], 2, 2)
    """

    def __init__(
        self,
        train_dir: str | Path,
        image_size: int | Sequence[int],
        val_dir: str | Path | None = None,
        channels: int = 3,
        classes: Sequence[str] | None = None,
        val_fraction: float = 0.1,
        resize: Resize = "center_crop",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"`val_fraction` must be in (0, 1), got {val_fraction}")
        self.train_dir = Path(train_dir)
        self.val_dir = Path(val_dir) if val_dir is not None else None
        self.image_size = image_size
        self.channels = channels
        self.val_fraction = val_fraction
        self.resize = resize
        # Scanning the folders here makes a wrong path fail when the config is built, not at fit time.
        self._train_folder = ImageFolderDataset(self.train_dir, image_size, channels, resize, classes)
        self.classes = self._train_folder.classes
        self.num_classes = len(self.classes)

    def setup(self, stage: str | None = None) -> None:
        if self.train_dataset is not None:
            return
        if self.val_dir is None:
            self.train_dataset, self.val_dataset = _split(self._train_folder, self.val_fraction, self.seed)
        else:
            self.train_dataset = self._train_folder
            self.val_dataset = ImageFolderDataset(
                self.val_dir, self.image_size, self.channels, self.resize, self.classes
            )


class CatsVsDogsDataModule(ImageFolderDataModule):
    """Cats vs Dogs (Microsoft's ``kagglecatsanddogs`` archive, unpacked): ``root/Cat/*.jpg`` and
    ``root/Dog/*.jpg`` (the archive's ``PetImages`` folder), label 0 = cat, 1 = dog.

    Also accepted: lower-case ``cat``/``dog`` folders, and ``root/train/`` and ``root/val/`` each holding
    the two class folders. The archive holds a few files PIL cannot decode; ``verify_images=True``
    drops them at setup (one header read per file) instead of failing when a batch meets them.

    Args:
        root: the ``PetImages`` folder (or one with ``train/`` and ``val/``).
        image_size: side of the square images fed to the network (default 128).
        verify_images: check every file with PIL at setup and skip unreadable ones.
        **kwargs: see :class:`ImageFolderDataModule` and :class:`ImageDataModule`.
    """

    LAYOUT = (
        "  ROOT/Cat/1.jpg ...   ROOT/Dog/1.jpg ...\n"
        "or ROOT/train/{Cat,Dog}/*.jpg and ROOT/val/{Cat,Dog}/*.jpg"
    )

    def __init__(
        self,
        root: str | Path,
        image_size: int | Sequence[int] = 128,
        verify_images: bool = False,
        augmentation: Augmentation = "flip",
        **kwargs: Any,
    ) -> None:
        root = Path(root)
        if not root.is_dir():
            raise _layout_error(root, "Cats vs Dogs folder not found", self.LAYOUT)
        train_dir, val_dir = (root / "train", root / "val") if (root / "train").is_dir() else (root, None)
        names = {path.name for path in train_dir.iterdir() if path.is_dir()}
        classes = next((pair for pair in (["Cat", "Dog"], ["cat", "dog"]) if set(pair) <= names), None)
        if classes is None:
            raise _layout_error(
                train_dir, f"no Cat/Dog class folders (found {sorted(names)[:10]})", self.LAYOUT
            )
        super().__init__(
            train_dir, image_size, val_dir=val_dir, classes=classes, augmentation=augmentation, **kwargs
        )
        if verify_images:
            _drop_unreadable(self._train_folder)

    def setup(self, stage: str | None = None) -> None:
        already = self.train_dataset is not None
        super().setup(stage)
        if not already and self.val_dir is not None and isinstance(self.val_dataset, ImageListDataset):
            _drop_unreadable(self.val_dataset)


def _drop_unreadable(dataset: ImageListDataset) -> None:
    from PIL import Image

    keep = []
    for index, file in enumerate(dataset.files):
        try:
            with Image.open(file) as image:
                image.verify()
            keep.append(index)
        except Exception:  # any decoding failure: skip the file
            continue
    dataset.files = [dataset.files[index] for index in keep]
    dataset.labels = dataset.labels[keep]


class CelebADataModule(ImageDataModule):
    """CelebA, aligned and cropped images, one binary attribute (label 1 where the attribute is +1).

    Reads the published files: ``root/img_align_celeba/*.jpg``, ``root/list_attr_celeba.txt`` (number
    of images, the 40 attribute names, then one line per image with -1/1 values) and
    ``root/list_eval_partition.txt`` (one line per image: 0 train, 1 validation, 2 test).

    Args:
        root: folder holding the three items above.
        attribute: the attribute to predict, e.g. ``"Smiling"``, ``"Eyeglasses"``, ``"Male"``.
        image_size: images are center-cropped to a square and resized to this side (default 128).
        **kwargs: see :class:`ImageDataModule`.

    Example:
        >>> CelebADataModule.read_attributes  # doctest: +ELLIPSIS
        <function CelebADataModule.read_attributes at ...>
    """

    LAYOUT = (
        "  ROOT/img_align_celeba/000001.jpg ...\n"
        "  ROOT/list_attr_celeba.txt      (count; 40 attribute names; then 'FILE v1 ... v40' per line)\n"
        "  ROOT/list_eval_partition.txt   ('FILE 0|1|2' per line: train / validation / test)"
    )
    num_classes = 2

    def __init__(
        self,
        root: str | Path,
        attribute: str = "Smiling",
        image_size: int | Sequence[int] = 128,
        augmentation: Augmentation = "flip",
        **kwargs: Any,
    ) -> None:
        super().__init__(augmentation=augmentation, **kwargs)
        self.root = Path(root)
        self.attribute = attribute
        self.image_size = image_size
        for item in ("img_align_celeba", "list_attr_celeba.txt", "list_eval_partition.txt"):
            if not (self.root / item).exists():
                raise _layout_error(self.root / item, "CelebA file or folder not found", self.LAYOUT)
        names = self.read_attributes(self.root / "list_attr_celeba.txt")[0]
        if attribute not in names:
            raise ValueError(f"`attribute` must be one of the CelebA attributes {names}, got {attribute!r}")

    @staticmethod
    def read_attributes(path: str | Path) -> tuple[list[str], list[str], Tensor]:
        """Parse ``list_attr_celeba.txt``: (attribute names, file names, (N, 40) int8 tensor of -1/1)."""
        path = Path(path)
        lines = path.read_text().splitlines()
        try:
            count = int(lines[0].strip())
            names = lines[1].split()
            rows = [line.split() for line in lines[2 : 2 + count] if line.strip()]
            files = [row[0] for row in rows]
            values = torch.tensor([[int(value) for value in row[1:]] for row in rows], dtype=torch.int8)
        except (IndexError, ValueError) as error:
            raise _layout_error(
                path, f"malformed attribute file ({error})", CelebADataModule.LAYOUT
            ) from error
        if len(rows) != count or values.shape[1] != len(names):
            raise _layout_error(
                path,
                f"malformed attribute file: header says {count} images and {len(names)} attributes, "
                f"found {len(rows)} rows of {values.shape[1] if rows else 0} values",
                CelebADataModule.LAYOUT,
            )
        return names, files, values

    def _partition(self) -> dict[str, int]:
        path = self.root / "list_eval_partition.txt"
        partition = {}
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            parts = line.split()
            if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
                raise _layout_error(path, f"malformed line {number}: {line!r}", self.LAYOUT)
            partition[parts[0]] = int(parts[1])
        return partition

    def setup(self, stage: str | None = None) -> None:
        if self.train_dataset is not None:
            return
        names, files, values = self.read_attributes(self.root / "list_attr_celeba.txt")
        labels = (values[:, names.index(self.attribute)] > 0).long().tolist()
        partition = self._partition()
        splits: dict[int, tuple[list[Path], list[int]]] = {0: ([], []), 1: ([], []), 2: ([], [])}
        for file, label in zip(files, labels, strict=True):
            if file not in partition:
                raise _layout_error(
                    self.root / "list_eval_partition.txt", f"no partition for {file}", self.LAYOUT
                )
            splits[partition[file]][0].append(self.root / "img_align_celeba" / file)
            splits[partition[file]][1].append(label)
        missing = next((file for file in splits[0][0][:1] if not file.is_file()), None)
        if missing is not None:
            raise _layout_error(missing, "CelebA image not found", self.LAYOUT)
        self.train_dataset, self.val_dataset, self.test_dataset = (
            ImageListDataset(*splits[index], self.image_size, 3, "center_crop") for index in range(3)
        )


class ImageNetDataModule(ImageDataModule):
    """ImageNet (ILSVRC 2012) from its class folders: ``root/train/n01440764/*.JPEG`` and
    ``root/val/n01440764/*.JPEG`` (the validation images sorted into class folders, as most
    preparation scripts do).

    Training images are resized in the workers (shorter side ``resize_size``, center crop to a square
    ``resize_size``) and cropped on the device with a random resized crop to ``image_size`` plus a flip;
    validation images get the shorter side ``resize_size`` and a center crop ``image_size``, the usual
    protocol. For ImageNet-scale throughput from sequential storage use
    :class:`~lightning_ot.data.ShardedImageDataModule`.

    Args:
        root: folder with ``train/`` and ``val/``.
        image_size: side of the network's input (224).
        resize_size: side the files are first resized to (256).
        **kwargs: see :class:`ImageDataModule`.
    """

    LAYOUT = "  ROOT/train/n01440764/xxx.JPEG ...  (one folder per class)\n  ROOT/val/n01440764/yyy.JPEG ..."

    def __init__(
        self,
        root: str | Path,
        image_size: int = 224,
        resize_size: int = 256,
        augmentation: Augmentation = "resized_crop_flip",
        classes: Sequence[str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(augmentation=augmentation, **kwargs)
        self.root = Path(root)
        if resize_size < image_size:
            raise ValueError(f"`resize_size` ({resize_size}) must be >= `image_size` ({image_size})")
        for split in ("train", "val"):
            if not (self.root / split).is_dir():
                raise _layout_error(self.root / split, "ImageNet split folder not found", self.LAYOUT)
        self.image_size = image_size
        self.resize_size = resize_size
        self._train_folder = ImageFolderDataset(self.root / "train", resize_size, 3, "center_crop", classes)
        self.classes = self._train_folder.classes
        self.num_classes = len(self.classes)

    def setup(self, stage: str | None = None) -> None:
        if self.train_dataset is not None:
            return
        # Without augmentation nothing brings the training images to `image_size` on the device.
        self.train_dataset = (
            self._train_folder
            if self.augmentation_kind != "none"
            else _CenterCropped(self._train_folder, self.image_size)
        )
        self.val_dataset = _CenterCropped(
            ImageFolderDataset(self.root / "val", self.resize_size, 3, "center_crop", self.classes),
            self.image_size,
        )


class _CenterCropped(Dataset):
    def __init__(self, dataset: Dataset, size: int) -> None:
        self.dataset = dataset
        self.size = size

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        image, label = self.dataset[index]
        top, left = (image.shape[1] - self.size) // 2, (image.shape[2] - self.size) // 2
        return image[:, top : top + self.size, left : left + self.size], label
