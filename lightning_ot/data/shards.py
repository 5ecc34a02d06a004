"""Streaming from tar shards (the webdataset layout) for ImageNet-scale data, with the standard library.

A shard is a plain ``.tar`` file of samples; each sample is two members sharing a key:
``KEY.jpg`` (or ``.jpeg``, ``.png``, ``.webp``: the encoded image, as published) and ``KEY.cls``
(the label as ASCII digits). This is the layout of the ``webdataset`` library, so shards it wrote are
read here and the other way round. Reading shards sequentially is what makes ImageNet-scale training
fast on network file systems and object stores: one large file per thousand images.

:func:`write_shards` turns any list of image files (for instance an
:class:`~lightning_ot.data.ImageFolderDataset`) into shards plus an ``index.json`` of sample counts.
:class:`ShardedImageDataModule` streams them: shards are spread over processes (DDP ranks) and
DataLoader workers, reshuffled every epoch, and every rank yields the *same number* of samples
(a rank that runs out re-reads its shards), so that no rank waits forever for the others.
"""

from __future__ import annotations

import io
import json
import random
import tarfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from lightning_ot.data.images import Augmentation, DatasetLayoutError, ImageDataModule, Resize, load_image

__all__ = ["ShardedImageDataModule", "ShardedImageDataset", "count_shard_samples", "write_shards"]

_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
_LAYOUT = (
    "  ROOT/shard-000000.tar  (members: KEY.jpg + KEY.cls per sample)\n"
    "  ROOT/shard-000001.tar ...\n"
    '  ROOT/index.json        (optional: {"shard-000000.tar": NUMBER_OF_SAMPLES, ...})'
)


def write_shards(
    files: Sequence[str | Path],
    labels: Sequence[int],
    out_dir: str | Path,
    samples_per_shard: int = 1000,
    prefix: str = "shard",
) -> list[Path]:
    """Write ``(file, label)`` pairs into tar shards (the file bytes are copied, not re-encoded).

    Args:
        files: encoded image files (their extension is kept inside the shard).
        labels: one int label per file.
        out_dir: created if needed; receives ``PREFIX-000000.tar`` ... and ``index.json``.
        samples_per_shard: samples per tar file.

    Returns:
        the shard paths, in order.

    Example:
        >>> import tempfile, pathlib, PIL.Image
        >>> folder = pathlib.Path(tempfile.mkdtemp())
        >>> PIL.Image.new("RGB", (8, 8)).save(folder / "a.png")
        >>> [path.name for path in write_shards([folder / "a.png"] * 3, [0, 1, 0], folder / "shards", 2)]
        ['shard-000000.tar', 'shard-000001.tar']
    """
    if len(files) != len(labels):
        raise ValueError(f"got {len(files)} files but {len(labels)} labels")
    if samples_per_shard < 1:
        raise ValueError(f"`samples_per_shard` must be >= 1, got {samples_per_shard}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    shards: list[Path] = []
    counts: dict[str, int] = {}
    for start in range(0, len(files), samples_per_shard):
        path = out_dir / f"{prefix}-{len(shards):06d}.tar"
        with tarfile.open(path, "w") as archive:
            for index in range(start, min(start + samples_per_shard, len(files))):
                file = Path(files[index])
                suffix = file.suffix.lower() if file.suffix.lower() in _IMAGE_SUFFIXES else ".jpg"
                key = f"{index:09d}"
                _add_member(archive, key + suffix, file.read_bytes())
                _add_member(archive, key + ".cls", str(int(labels[index])).encode())
        counts[path.name] = min(samples_per_shard, len(files) - start)
        shards.append(path)
    (out_dir / "index.json").write_text(json.dumps(counts, indent=1))
    return shards


def _add_member(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    archive.addfile(info, io.BytesIO(data))


def _iterate_shard(path: Path) -> Iterator[tuple[bytes, str, int]]:
    """(image bytes, image member name, label) of each sample of one shard, in order."""
    current_key, image, image_name, label = None, None, "", None
    try:
        with tarfile.open(path, "r|*") as archive:  # streaming mode: one sequential read
            for member in archive:
                if not member.isfile():
                    continue
                key, _, suffix = member.name.rpartition(".")
                if key != current_key:
                    if image is not None and label is not None:
                        yield image, image_name, label
                    current_key, image, label = key, None, None
                data = archive.extractfile(member).read()  # type: ignore[union-attr]
                if "." + suffix.lower() in _IMAGE_SUFFIXES:
                    image, image_name = data, member.name
                elif suffix == "cls":
                    label = int(data.decode().strip())
            if image is not None and label is not None:
                yield image, image_name, label
    except (tarfile.TarError, ValueError) as error:
        raise ValueError(f"malformed shard {path}: {error}\nexpected layout:\n{_LAYOUT}") from error


def count_shard_samples(shards: Sequence[str | Path]) -> list[int]:
    """Samples per shard, from the ``index.json`` next to them when it lists them, else by reading."""
    counts: list[int] = []
    indexes: dict[Path, dict[str, int]] = {}
    for shard in map(Path, shards):
        index_file = shard.parent / "index.json"
        if index_file not in indexes:
            indexes[index_file] = json.loads(index_file.read_text()) if index_file.is_file() else {}
        known = indexes[index_file].get(shard.name)
        counts.append(int(known) if known is not None else sum(1 for _ in _iterate_shard(shard)))
    return counts


class ShardedImageDataset(IterableDataset):
    """Stream ``(image, label)`` samples from tar shards, split over processes and workers.

    Each epoch (each call to ``iter``) the shard order is reshuffled with ``seed + epoch`` (the same
    on every rank), rank ``r`` of ``W`` reads shards ``r::W`` of that order, its DataLoader workers
    split those again, and samples pass through a shuffle buffer. Every rank yields exactly
    ``samples_per_rank`` samples.

    Args:
        shards: the tar files.
        samples_per_rank: samples each rank yields per epoch (default: total // world_size).
        image_size, channels, resize: decoding, see :func:`~lightning_ot.data.load_image`.
        shuffle: reshuffle shards each epoch and shuffle samples through a buffer.
        shuffle_buffer: samples held in the shuffle buffer.
        seed: base seed.
        rank, world_size: this process among all (set by the data module from the trainer).

    Item:
        ``(image, label)``: ``(channels, H, W)`` uint8 tensor and 0-d int64 tensor.
    """

    def __init__(
        self,
        shards: Sequence[str | Path],
        image_size: int | Sequence[int],
        samples_per_rank: int | None = None,
        channels: int = 3,
        resize: Resize = "center_crop",
        shuffle: bool = True,
        shuffle_buffer: int = 1000,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        super().__init__()
        self.shards = [Path(shard) for shard in shards]
        if len(self.shards) < world_size:
            raise ValueError(
                f"{len(self.shards)} shard(s) for {world_size} processes: write at least one shard per "
                "process (more shards than processes x workers balances better)"
            )
        self._counts = dict(zip(self.shards, count_shard_samples(self.shards), strict=True))
        if samples_per_rank is None:
            samples_per_rank = sum(self._counts.values()) // world_size
        if samples_per_rank < 1:
            raise ValueError(f"the shards hold fewer samples than the {world_size} processes")
        self.samples_per_rank = samples_per_rank
        self.image_size = image_size
        self.channels = channels
        self.resize = resize
        self.shuffle = shuffle
        self.shuffle_buffer = shuffle_buffer
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0

    def __len__(self) -> int:
        return self.samples_per_rank

    def _decode(self, data: bytes, label: int) -> tuple[Tensor, Tensor]:
        image = load_image(io.BytesIO(data), self.image_size, self.channels, self.resize)  # type: ignore[arg-type]
        return image, torch.tensor(label, dtype=torch.int64)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        epoch = self.epoch
        self.epoch += 1  # persistent workers keep their copy: each epoch draws a new order
        order = list(self.shards)
        if self.shuffle:
            random.Random(self.seed + epoch).shuffle(order)
        mine = order[self.rank :: self.world_size]
        worker = get_worker_info()
        worker_id, num_workers = (worker.id, worker.num_workers) if worker is not None else (0, 1)
        quota = self.samples_per_rank // num_workers + (worker_id < self.samples_per_rank % num_workers)
        shards = mine[worker_id::num_workers] or mine[worker_id % len(mine) :: len(mine)]
        generator = random.Random(self.seed * 1_000_003 + epoch * 1009 + self.rank * 101 + worker_id)
        stream = self._cycle(shards)
        # A buffer no larger than what these shards hold, so no sample comes twice before all came once.
        buffer_size = max(
            1, min(self.shuffle_buffer if self.shuffle else 1, sum(self._counts[s] for s in shards))
        )
        buffer: list[tuple[bytes, int]] = []
        drawn = 0
        for _ in range(quota):
            while len(buffer) < buffer_size and drawn < quota:
                buffer.append(next(stream))
                drawn += 1
            index = generator.randrange(len(buffer)) if self.shuffle else 0
            buffer[index], buffer[-1] = buffer[-1], buffer[index]
            yield self._decode(*buffer.pop())

    @staticmethod
    def _cycle(shards: Sequence[Path]) -> Iterator[tuple[bytes, int]]:
        """The samples of ``shards`` in order, again and again."""
        while True:
            read_any = False
            for shard in shards:
                for data, _, label in _iterate_shard(shard):
                    read_any = True
                    yield data, label
            if not read_any:
                raise ValueError(f"the shards {[str(shard) for shard in shards]} hold no sample")


def _resolve_shards(location: str | Path | Sequence[str | Path]) -> list[Path]:
    if isinstance(location, str | Path):
        path = Path(location)
        if path.is_dir():
            shards = sorted(path.glob("*.tar"))
        else:
            shards = sorted(path.parent.glob(path.name)) if any(c in path.name for c in "*?[") else [path]
    else:
        shards = [Path(item) for item in location]
    missing = [str(shard) for shard in shards if not shard.is_file()]
    if not shards or missing:
        raise DatasetLayoutError(
            f"no tar shards found at {location}"
            + (f" (missing: {missing[:5]})" if missing else "")
            + f"\nexpected layout:\n{_LAYOUT}"
        )
    return shards


class ShardedImageDataModule(ImageDataModule):
    """Train and validate from tar shards (see the module docstring), e.g. ImageNet written once with
    :func:`write_shards` from :class:`~lightning_ot.data.ImageFolderDataset`.

    Args:
        train_shards: a folder of ``*.tar`` files, a glob (``/data/imagenet/train-*.tar``) or a list.
        val_shards: same, for validation (not shuffled).
        num_classes: number of classes in the labels.
        image_size: side (or ``(height, width)``) the workers decode to; with ``"resized_crop_flip"``
            the device crops to ``crop_size``.
        crop_size: size after the device-side random resized crop (default ``image_size``).
        shuffle_buffer: samples in each worker's shuffle buffer.
        **kwargs: see :class:`~lightning_ot.data.ImageDataModule`.
    """

    def __init__(
        self,
        train_shards: str | Path | Sequence[str | Path],
        val_shards: str | Path | Sequence[str | Path],
        num_classes: int,
        image_size: int | Sequence[int] = 224,
        crop_size: int | Sequence[int] | None = None,
        channels: int = 3,
        augmentation: Augmentation = "resized_crop_flip",
        shuffle_buffer: int = 1000,
        **kwargs: Any,
    ) -> None:
        super().__init__(augmentation=augmentation, **kwargs)
        if num_classes < 2:
            raise ValueError(f"`num_classes` must be >= 2, got {num_classes}")
        self.train_shards = _resolve_shards(train_shards)
        self.val_shards = _resolve_shards(val_shards)
        self.num_classes = num_classes
        self.decode_size = image_size
        self.image_size = crop_size if crop_size is not None else image_size
        self.channels = channels
        self.shuffle_buffer = shuffle_buffer

    def setup(self, stage: str | None = None) -> None:
        rank, world_size = 0, 1
        if self.trainer is not None:
            rank, world_size = self.trainer.global_rank, self.trainer.world_size
        common = {
            "image_size": self.decode_size,
            "channels": self.channels,
            "rank": rank,
            "world_size": world_size,
        }
        self.train_dataset = ShardedImageDataset(
            self.train_shards, shuffle=True, shuffle_buffer=self.shuffle_buffer, seed=self.seed, **common
        )
        self.val_dataset = ShardedImageDataset(self.val_shards, shuffle=False, **common)

    def _loader(self, dataset: Any, train: bool, name: str) -> DataLoader:
        if dataset is None:
            raise RuntimeError(f"{type(self).__name__} has no {name} set: call setup() first")
        if train and self.trainer is not None:
            # A fit resumed from a checkpoint starts at its epoch: draw that epoch's shard order, not
            # epoch 0's (a resume in the middle of an epoch restarts that epoch's stream).
            dataset.epoch = self.trainer.current_epoch
        return DataLoader(
            dataset,
            batch_size=self.batch_size if train else self.val_batch_size,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory and torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,
            drop_last=train,
        )
