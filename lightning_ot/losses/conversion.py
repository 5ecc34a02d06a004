"""Conversions between this project's hKR parameters and other public conventions.

This project (and the papers) write ``loss = hinge_weight * mean ReLU(margin - y f) - KR``.

| library        | its loss                                                   | ``margin``       | ``hinge_weight``      | scale of its loss |
|----------------|------------------------------------------------------------|------------------|-----------------------|-------------------|
| lightning-ot   | ``hinge_weight * hinge(margin) - KR``                      | ``margin``       | ``hinge_weight``      | 1                 |
| deel-lip       | ``alpha * hinge(min_margin / 2) - KR``                     | ``min_margin/2`` | ``alpha``             | 1                 |
| deel-torchlip  | ``alpha * hinge(min_margin / 2) - (1 - alpha) * KR``, alpha in [0, 1) | ``min_margin/2`` | ``alpha / (1 - alpha)`` | ``1 - alpha``  |

"scale of its loss" is the factor by which the other library's value equals ours: deel-torchlip's
loss is ``(1 - alpha)`` times ours, so its gradients are too; with Adam this scale does not matter.

The soft multiclass hKR's ``temperature`` is not the same number: deel-torchlip's
``SoftHKRMulticlassLoss(temperature=t, min_margin=M)`` scales the logits in its softmax by
``clip(t * M / max(mu, M), 0.005, 250)`` and :class:`~lightning_ot.losses.SoftHKRLoss` by
``temperature * margin / max(mu, margin / 100)`` (``mu`` the running mean of ``|f|``). With
``margin = M / 2`` the same number gives half deel-torchlip's effective temperature, so
``temperature = 2 t``; the two then agree whenever ``mu >= M`` and ``t * M / mu`` lies in
[0.005, 250] (at steady state on a trained network). Below ``mu = M`` (early in training)
deel-torchlip holds its temperature at ``t`` while this project's keeps rising, up to 100 times
``temperature``. deel-torchlip's running mean also starts at ``M`` (here at ``margin``) and is updated
by every call, evaluation included (here in training mode only).

deel-torchlip's one-vs-all ``HKRMulticlassLoss`` has no equivalent parameters: its hinge weighs the
true class by ``C - 1`` against each other class (this project's
:func:`~lightning_ot.losses.functional.multiclass_hkr` weighs every column alike), so no conversion
makes the two losses equal.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["HKRParameters", "from_deel_lip", "from_deel_torchlip", "to_deel_lip", "to_deel_torchlip"]


class HKRParameters(NamedTuple):
    """``margin``, ``hinge_weight`` (and, converted from a soft hKR, ``temperature``) in this project's
    convention, and the factor ``scale`` such that the other library's loss equals ``scale * ours``."""

    margin: float
    hinge_weight: float
    scale: float = 1.0
    temperature: float | None = None


def from_deel_lip(alpha: float, min_margin: float) -> HKRParameters:
    """Parameters equivalent to deel-lip's ``HKR(alpha, min_margin)``.

    Example:
        >>> from_deel_lip(alpha=50.0, min_margin=0.2)
        HKRParameters(margin=0.1, hinge_weight=50.0, scale=1.0, temperature=None)
    """
    if min_margin <= 0:
        raise ValueError(f"`min_margin` must be > 0, got {min_margin}")
    return HKRParameters(margin=min_margin / 2.0, hinge_weight=float(alpha), scale=1.0)


def to_deel_lip(margin: float, hinge_weight: float) -> dict[str, float]:
    """deel-lip's ``alpha`` and ``min_margin`` for this project's ``margin`` and ``hinge_weight``."""
    return {"alpha": float(hinge_weight), "min_margin": 2.0 * margin}


def from_deel_torchlip(alpha: float, min_margin: float, temperature: float | None = None) -> HKRParameters:
    """Parameters equivalent to deel-torchlip's ``HKRLoss(alpha, min_margin)`` (alpha in [0, 1)), or,
    with its ``temperature``, to ``SoftHKRMulticlassLoss(alpha, min_margin, temperature=...)``: this
    project's ``temperature`` is twice deel-torchlip's (see the module docstring for where the two
    adaptive temperatures still differ).

    Example:
        >>> from_deel_torchlip(alpha=0.98, min_margin=1.0)  # doctest: +ELLIPSIS
        HKRParameters(margin=0.5, hinge_weight=48.99..., scale=0.02..., temperature=None)
        >>> from_deel_torchlip(alpha=0.9, min_margin=1.0, temperature=5.0).temperature
        10.0
    """
    if not 0.0 <= alpha < 1.0:
        raise ValueError(f"deel-torchlip's `alpha` must be in [0, 1), got {alpha}")
    if min_margin <= 0:
        raise ValueError(f"`min_margin` must be > 0, got {min_margin}")
    if temperature is not None and temperature <= 0:
        raise ValueError(f"`temperature` must be > 0, got {temperature}")
    return HKRParameters(
        margin=min_margin / 2.0,
        hinge_weight=alpha / (1.0 - alpha),
        scale=1.0 - alpha,
        temperature=None if temperature is None else 2.0 * temperature,
    )


def to_deel_torchlip(
    margin: float, hinge_weight: float, temperature: float | None = None
) -> dict[str, float]:
    """deel-torchlip's ``alpha`` and ``min_margin`` (and ``temperature``, half this project's, for
    ``SoftHKRMulticlassLoss``) for this project's ``margin``, ``hinge_weight`` (and ``temperature``).

    Example:
        >>> to_deel_torchlip(margin=0.5, hinge_weight=5.0, temperature=10.0)  # doctest: +ELLIPSIS
        {'alpha': 0.833..., 'min_margin': 1.0, 'temperature': 5.0}
    """
    if temperature is not None and temperature <= 0:
        raise ValueError(f"`temperature` must be > 0, got {temperature}")
    converted = {"alpha": hinge_weight / (1.0 + hinge_weight), "min_margin": 2.0 * margin}
    if temperature is not None:
        converted["temperature"] = temperature / 2.0
    return converted
