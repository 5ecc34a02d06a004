"""Conversions between this project's hKR parameters and other public conventions.

This project (and the papers) write ``loss = hinge_weight * mean ReLU(margin - y f) - KR``.

| library        | its loss                                                   | ``margin``       | ``hinge_weight``      | scale of its loss |
|----------------|------------------------------------------------------------|------------------|-----------------------|-------------------|
| lightning-ot   | ``hinge_weight * hinge(margin) - KR``                      | ``margin``       | ``hinge_weight``      | 1                 |
| deel-lip       | ``alpha * hinge(min_margin / 2) - KR``                     | ``min_margin/2`` | ``alpha``             | 1                 |
| deel-torchlip  | ``alpha * hinge(min_margin / 2) - (1 - alpha) * KR``, alpha in [0, 1) | ``min_margin/2`` | ``alpha / (1 - alpha)`` | ``1 - alpha``  |

"scale of its loss" is the factor by which the other library's value equals ours: deel-torchlip's
loss is ``(1 - alpha)`` times ours, so its gradients are too; with Adam this scale does not matter.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["HKRParameters", "from_deel_lip", "from_deel_torchlip", "to_deel_lip", "to_deel_torchlip"]


class HKRParameters(NamedTuple):
    """``margin`` and ``hinge_weight`` in this project's convention, and the factor ``scale`` such that
    the other library's loss equals ``scale * ours``."""

    margin: float
    hinge_weight: float
    scale: float = 1.0


def from_deel_lip(alpha: float, min_margin: float) -> HKRParameters:
    """Parameters equivalent to deel-lip's ``HKR(alpha, min_margin)``.

    Example:
        >>> from_deel_lip(alpha=50.0, min_margin=0.2)
        HKRParameters(margin=0.1, hinge_weight=50.0, scale=1.0)
    """
    if min_margin <= 0:
        raise ValueError(f"`min_margin` must be > 0, got {min_margin}")
    return HKRParameters(margin=min_margin / 2.0, hinge_weight=float(alpha), scale=1.0)


def to_deel_lip(margin: float, hinge_weight: float) -> dict[str, float]:
    """deel-lip's ``alpha`` and ``min_margin`` for this project's ``margin`` and ``hinge_weight``."""
    return {"alpha": float(hinge_weight), "min_margin": 2.0 * margin}


def from_deel_torchlip(alpha: float, min_margin: float) -> HKRParameters:
    """Parameters equivalent to deel-torchlip's ``HKRLoss(alpha, min_margin)`` (alpha in [0, 1)).

    Example:
        >>> from_deel_torchlip(alpha=0.98, min_margin=1.0)  # doctest: +ELLIPSIS
        HKRParameters(margin=0.5, hinge_weight=48.99..., scale=0.02...)
    """
    if not 0.0 <= alpha < 1.0:
        raise ValueError(f"deel-torchlip's `alpha` must be in [0, 1), got {alpha}")
    if min_margin <= 0:
        raise ValueError(f"`min_margin` must be > 0, got {min_margin}")
    return HKRParameters(margin=min_margin / 2.0, hinge_weight=alpha / (1.0 - alpha), scale=1.0 - alpha)


def to_deel_torchlip(margin: float, hinge_weight: float) -> dict[str, float]:
    """deel-torchlip's ``alpha`` and ``min_margin`` for this project's ``margin`` and ``hinge_weight``."""
    return {"alpha": hinge_weight / (1.0 + hinge_weight), "min_margin": 2.0 * margin}
