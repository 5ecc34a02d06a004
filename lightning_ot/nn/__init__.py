"""1-Lipschitz layers in plain PyTorch (no Lightning)."""

from __future__ import annotations

from torch import nn

from lightning_ot.nn.activations import GroupSort, MaxMin
from lightning_ot.nn.linear import BjorckOrthogonalization, OrthogonalLinear, bjorck_orthonormalize
from lightning_ot.nn.normalization import Normalize

__all__ = [
    "BjorckOrthogonalization",
    "GroupSort",
    "MaxMin",
    "Normalize",
    "OrthogonalLinear",
    "bjorck_orthonormalize",
    "input_lipschitz_factor",
]


def input_lipschitz_factor(module: nn.Module) -> float:
    """Product of the ``lipschitz_factor`` of every submodule that declares one (e.g. :class:`Normalize`).

    The Lipschitz constant of a network of 1-Lipschitz layers is at most this product.

    Example:
        >>> input_lipschitz_factor(nn.Sequential(Normalize([0.0], [0.5]), nn.Flatten()))
        2.0
    """
    factor = 1.0
    for submodule in module.modules():
        factor *= float(getattr(submodule, "lipschitz_factor", 1.0))
    return factor
