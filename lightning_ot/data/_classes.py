"""The ``classes`` argument of the ten-class data modules: the labels to keep, relabelled in order."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def check_classes(classes: Sequence[int] | None) -> list[int] | None:
    """``classes`` as a list of ints (None stays None).

    Raises:
        ValueError: unless it lists at least two distinct labels in 0..9.
    """
    if classes is None:
        return None
    labels = [int(label) for label in classes]
    if len(labels) < 2 or len(set(labels)) != len(labels) or any(not 0 <= label <= 9 for label in labels):
        raise ValueError(f"`classes` must list at least two distinct labels in 0..9, got {labels}")
    return labels


def relabel(labels: np.ndarray, classes: Sequence[int]) -> np.ndarray:
    """(N,) labels in 0..9 -> their positions in ``classes`` (int64; -1 for a label not kept)."""
    lookup = np.full(10, -1, dtype=np.int64)
    lookup[list(classes)] = np.arange(len(classes))
    return lookup[labels]


def select_classes(
    images: np.ndarray, labels: np.ndarray, classes: Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
    """The (N, ...) images and (N,) labels of ``classes`` only, labels relabelled by :func:`relabel`."""
    positions = relabel(labels, classes)
    keep = positions >= 0
    return images[keep], positions[keep]
