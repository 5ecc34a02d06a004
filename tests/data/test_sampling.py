"""The training shuffle: a function of (seed, epoch), sharded over ranks, resumable inside an epoch; the
device-side augmentation: seeded per batch, resumable, leaving the global random state alone."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lightning_ot.data import ImageFolderDataModule, SyntheticImageDataModule
from lightning_ot.data.sampling import EpochShuffleSampler, resumable_loader
from tests.data.conftest import write_image


def _order(seed: int, epoch: int, size: int = 50, **kwargs: int) -> list[int]:
    sampler = EpochShuffleSampler(range(size), seed=seed, **kwargs)
    sampler.set_epoch(epoch)
    return list(sampler)


def test_the_order_is_a_function_of_seed_and_epoch() -> None:
    assert _order(0, 3) == _order(0, 3)
    orders = [_order(seed, epoch) for seed in (0, 1) for epoch in (0, 1, 2)]
    assert len({tuple(order) for order in orders}) == len(orders)  # seed s, epoch e+1 != seed s+1, epoch e
    assert all(sorted(order) == list(range(50)) for order in orders)
    assert _order(0, 5, shuffle=False) == list(range(50))


@pytest.mark.parametrize("world_size", [2, 3, 4])
def test_ranks_share_the_global_order(world_size: int) -> None:
    shards = [_order(7, 2, num_replicas=world_size, rank=rank) for rank in range(world_size)]
    assert len({len(shard) for shard in shards}) == 1
    padded = (_order(7, 2) * 2)[: len(shards[0]) * world_size]
    interleaved = [shards[step % world_size][step // world_size] for step in range(len(padded))]
    assert interleaved == padded


def test_a_loaded_sampler_continues_where_the_saved_one_stopped() -> None:
    sampler = EpochShuffleSampler(range(20), seed=3)
    sampler.set_epoch(4)
    iterator = iter(sampler)
    seen = [next(iterator) for _ in range(7)]
    resumed = EpochShuffleSampler(range(20), seed=3)
    resumed.load_state_dict(sampler.state_dict())
    resumed.set_epoch(4)  # Lightning sets the epoch again before the first batch
    assert seen + list(resumed) == _order(3, 4, size=20)
    resumed.load_state_dict({"epoch": 4, "drawn": 20})
    resumed.set_epoch(5)  # a checkpoint of a finished epoch: the next one starts from its beginning
    assert list(resumed) == _order(3, 5, size=20)


def test_every_data_module_shuffles_each_epoch_anew() -> None:
    data = SyntheticImageDataModule((1, 2, 2), num_classes=2, num_samples=32, batch_size=32)
    data.setup("fit")
    loader = data.train_dataloader()
    first = next(iter(loader))[0]
    loader.sampler.set_epoch(1)
    second = next(iter(loader))[0]
    assert not torch.equal(first, second)
    torch.testing.assert_close(first.sum(0), second.sum(0))  # the same samples, in another order
    assert len(resumable_loader(data.train_dataset, 5, seed=0, drop_last=True)) == 6


def test_augmentation_is_seeded_per_batch_and_resumes(tmp_path: Path) -> None:
    for label, name in enumerate(["a", "b"]):
        for index in range(2):
            write_image(tmp_path / name / f"{index}.png", label)

    def data() -> ImageFolderDataModule:
        return ImageFolderDataModule(tmp_path, image_size=8, num_workers=0, augmentation="crop_flip")

    images = torch.rand(4, 3, 8, 8)
    state = torch.get_rng_state()
    running = data()
    batches = [running.augment(images) for _ in range(3)]
    assert torch.equal(torch.get_rng_state(), state)  # the global random state is left as it was
    assert not torch.equal(batches[1], batches[2])
    resumed = data()
    torch.manual_seed(123)  # whatever happened to the global state in between
    resumed.load_state_dict(running.state_dict())
    assert torch.equal(resumed.augment(images), running.augment(images))
    fresh = data()
    assert torch.equal(fresh.augment(images), batches[0])
