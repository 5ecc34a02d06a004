from __future__ import annotations

import tarfile
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from lightning_ot.data import (
    DatasetLayoutError,
    ShardedImageDataModule,
    ShardedImageDataset,
    count_shard_samples,
    write_shards,
)
from tests.data.conftest import write_image

SAMPLES = 14


@pytest.fixture
def shards(tmp_path: Path) -> list[Path]:
    files, labels = [], []
    for index in range(SAMPLES):
        label = index % 2
        # The image's size encodes its index, so every decoded sample can be identified.
        files.append(
            write_image(
                tmp_path / "images" / f"{index}.{'png' if index % 3 else 'jpg'}", label, (10 + index, 12)
            )
        )
        labels.append(label)
    return write_shards(files, labels, tmp_path / "shards", samples_per_shard=3)


def _identify(dataset: ShardedImageDataset, num_workers: int = 0) -> list[tuple[int, int]]:
    loader = DataLoader(dataset, batch_size=None, num_workers=num_workers)
    return [(int(image.shape[2]) - 10, int(label)) for image, label in loader]


def test_shards_are_real_tar_files_in_the_webdataset_layout(shards: list[Path]) -> None:
    assert len(shards) == 5
    with tarfile.open(shards[0]) as archive:
        names = archive.getnames()
    assert names == [
        "000000000.jpg",
        "000000000.cls",
        "000000001.png",
        "000000001.cls",
        "000000002.png",
        "000000002.cls",
    ]
    assert count_shard_samples(shards) == [3, 3, 3, 3, 2]
    (shards[0].parent / "index.json").unlink()
    assert count_shard_samples(shards) == [3, 3, 3, 3, 2]  # by reading the tar files


@pytest.mark.parametrize("num_workers", [0, 2])
def test_ranks_get_equal_disjoint_shares_with_correct_labels(shards: list[Path], num_workers: int) -> None:
    seen = []
    for rank in range(2):
        dataset = ShardedImageDataset(shards, image_size=None, rank=rank, world_size=2, shuffle_buffer=4)
        samples = _identify(dataset, num_workers)
        assert len(samples) == len(dataset) == SAMPLES // 2
        assert all(label == index % 2 for index, label in samples)
        seen.append({index for index, _ in samples})
    if num_workers == 0:
        # Shards are split between ranks: the two shares are disjoint.
        assert not seen[0] & seen[1]


def test_each_epoch_reshuffles_and_order_is_reproducible(shards: list[Path]) -> None:
    ordered = ShardedImageDataset(shards, image_size=None, shuffle=False)
    assert [index for index, _ in _identify(ordered)] == list(range(SAMPLES))
    unordered = ShardedImageDataset(shards, image_size=None, shuffle_buffer=5, seed=3)
    epoch_one, epoch_two = _identify(unordered), _identify(unordered)
    assert sorted(epoch_one) == sorted(epoch_two) == [(index, index % 2) for index in range(SAMPLES)]
    assert epoch_one != epoch_two
    again = ShardedImageDataset(shards, image_size=None, shuffle_buffer=5, seed=3)
    assert _identify(again) == epoch_one
    decoded = ShardedImageDataset(shards, image_size=(12, 12), shuffle=False)
    assert {tuple(image.shape) for image, _ in DataLoader(decoded, batch_size=None)} == {(3, 12, 12)}


def test_sharded_module_yields_float_batches(shards: list[Path]) -> None:
    data = ShardedImageDataModule(
        shards[0].parent, shards[-2:], num_classes=2, image_size=12, crop_size=8, batch_size=4, num_workers=0
    )
    data.setup("fit")
    images, labels = data.on_after_batch_transfer(next(iter(data.train_dataloader())), 0)
    assert images.shape == (4, 3, 12, 12)
    assert images.dtype == torch.float32
    assert labels.dtype == torch.int64
    assert data.augment(images).shape == (4, 3, 8, 8)
    assert len(data.val_dataset) == 5


def test_missing_and_malformed_shards_are_clear_errors(shards: list[Path], tmp_path: Path) -> None:
    with pytest.raises(DatasetLayoutError, match=r"(?s)no tar shards found at .*nowhere.*KEY.cls"):
        ShardedImageDataModule(tmp_path / "nowhere", shards, num_classes=2)
    broken = tmp_path / "broken.tar"
    broken.write_bytes(b"\x00garbage" * 100)
    with pytest.raises(ValueError, match=r"malformed shard .*broken\.tar"):
        _identify(ShardedImageDataset([broken], image_size=None, samples_per_rank=1))
    with pytest.raises(ValueError, match="5 shard"):
        ShardedImageDataset(shards, image_size=None, world_size=6)


def test_a_resumed_fit_draws_the_shard_order_of_its_epoch(shards: list[Path]) -> None:
    import lightning.pytorch as pl

    def first_epoch_order(start_epoch: int) -> list[tuple[int, int]]:
        data = ShardedImageDataModule(shards, shards[-1:], num_classes=2, image_size=None, num_workers=0)
        data.setup("fit")
        trainer = pl.Trainer(logger=False, enable_progress_bar=False)
        trainer.fit_loop.epoch_progress.current.completed = start_epoch  # as restored from a checkpoint
        data.trainer = trainer
        data._loader(data.train_dataset, True, "training")
        return _identify(data.train_dataset)

    uninterrupted = ShardedImageDataset(shards, image_size=None, shuffle_buffer=1000, seed=0)
    orders = [_identify(uninterrupted) for _ in range(3)]
    assert first_epoch_order(0) == orders[0]
    assert first_epoch_order(2) == orders[2] != orders[0]
