"""Training loaders that resume exactly: the shuffle is a function of ``(seed, epoch)``, and the position
inside an epoch is checkpointed.

Lightning calls ``set_epoch`` on a loader's sampler at the start of every epoch and saves the
``state_dict`` of a loader that has one into its checkpoints (``torchdata``'s
:class:`~torchdata.stateful_dataloader.StatefulDataLoader`), so a run resumed from any checkpoint, at
the end of an epoch or in the middle of one, sees the batches the uninterrupted run would have seen.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler
from torchdata.stateful_dataloader import StatefulDataLoader

__all__ = ["EpochShuffleSampler", "epoch_seed", "resumable_loader"]


def epoch_seed(seed: int, epoch: int) -> int:
    """A 64-bit seed for the shuffle of ``epoch``, mixed from ``(seed, epoch)`` so that seed ``s`` at epoch
    ``e + 1`` does not repeat seed ``s + 1`` at epoch ``e`` (as ``seed + epoch`` would).

    Example:
        >>> epoch_seed(0, 1) == epoch_seed(1, 0)
        False
    """
    (state,) = np.random.SeedSequence([int(seed) % 2**63, int(epoch)]).generate_state(1, dtype=np.uint64)
    return int(state) % 2**63


class EpochShuffleSampler(DistributedSampler):
    """Indices of the epoch, shuffled with :func:`epoch_seed` ``(seed, epoch)``, this rank's share only.

    Rank ``r`` of ``W`` takes positions ``r, r + W, ...`` of the epoch's permutation (padded by wrapping
    around to a multiple of ``W``, or cut with ``drop_last``), so ``W`` ranks with batch ``b`` see the
    same global batches as one process with batch ``W * b``. ``state_dict`` holds the epoch and the
    number of indices already drawn in it: a sampler loaded from it continues where that one stopped.
    It is a :class:`~torch.utils.data.DistributedSampler`, so Lightning leaves it in place under DDP and
    calls :meth:`set_epoch` on it at every epoch.

    Args:
        dataset: the map-style dataset (only its length is used).
        seed: seed of the shuffle, the same on every rank.
        num_replicas: number of processes.
        rank: this process among them.
        shuffle: shuffle every epoch (``False``: dataset order).
        drop_last: drop the tail that does not divide evenly among the ranks instead of padding.

    Example:
        >>> sampler = EpochShuffleSampler(range(6), seed=0)
        >>> first = list(sampler)
        >>> sampler.set_epoch(1)
        >>> sorted(first) == sorted(sampler) and first != list(sampler)
        True
        >>> resumed = EpochShuffleSampler(range(6), seed=0)
        >>> iterator = iter(sampler)
        >>> _ = next(iterator), next(iterator)
        >>> resumed.load_state_dict(sampler.state_dict())
        >>> list(resumed) == list(iterator)
        True
    """

    def __init__(
        self,
        dataset: Dataset | Any,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        shuffle: bool = True,
        drop_last: bool = False,
    ) -> None:
        if len(dataset) < 1:
            raise ValueError("`dataset` is empty: nothing to sample")
        super().__init__(
            dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=drop_last
        )
        self.drawn = 0  # indices of the current epoch handed out so far
        self._resume_at = 0

    def epoch_indices(self, epoch: int) -> list[int]:
        """This rank's indices of ``epoch``, in order."""
        count = len(self.dataset)
        if self.shuffle:
            generator = torch.Generator().manual_seed(epoch_seed(self.seed, epoch))
            order = torch.randperm(count, generator=generator).tolist()
        else:
            order = list(range(count))
        order = (order * (self.total_size // count + 1))[: self.total_size]  # pad or cut to W ranks
        return order[self.rank :: self.num_replicas]

    def __iter__(self) -> Iterator[int]:
        # Lazy: the order is drawn at the first index, after Lightning's `set_epoch` for that epoch.
        indices = self.epoch_indices(self.epoch)
        start, self._resume_at = self._resume_at, 0
        self.drawn = start
        for index in indices[start:]:
            self.drawn += 1
            yield index

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self._resume_at = 0  # a position saved in another epoch does not apply to this one
        super().set_epoch(epoch)

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "drawn": self.drawn}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        self.epoch = int(state_dict["epoch"])
        self.drawn = self._resume_at = int(state_dict["drawn"])


def resumable_loader(
    dataset: Dataset,
    batch_size: int,
    seed: int,
    trainer: Any | None = None,
    shuffle: bool = True,
    drop_last: bool = False,
    **kwargs: Any,
) -> StatefulDataLoader:
    """A training loader over ``dataset`` that Lightning checkpoints and resumes exactly.

    Args:
        dataset: a map-style dataset.
        batch_size: samples per batch (per process).
        seed: seed of the shuffle (:class:`EpochShuffleSampler`).
        trainer: the Lightning trainer, if any: its ``world_size`` and ``global_rank`` shard the data.
        shuffle: shuffle every epoch.
        drop_last: drop the last incomplete batch of each epoch.
        **kwargs: other :class:`~torch.utils.data.DataLoader` arguments (``num_workers`` ...).

    Example:
        >>> loader = resumable_loader(torch.utils.data.TensorDataset(torch.arange(10)), 4, seed=0)
        >>> [len(batch) for (batch,) in loader]
        [4, 4, 2]
    """
    world_size, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
    sampler = EpochShuffleSampler(dataset, seed, num_replicas=world_size, rank=rank, shuffle=shuffle)
    with warnings.catch_warnings():  # torchdata 0.11 calls a torch function that torch 2.13 deprecates
        warnings.filterwarnings("ignore", message=".*set_vital.* is deprecated")
        return StatefulDataLoader(
            dataset, batch_size=batch_size, sampler=sampler, drop_last=drop_last, **kwargs
        )
