"""1-Lipschitz layers in plain PyTorch (no Lightning), the Lipschitz audit and the vanilla export."""

from __future__ import annotations

from torch import nn

from lightning_ot.nn._cache import cached_weights
from lightning_ot.nn.activations import GroupSort, MaxMin, max_min
from lightning_ot.nn.block_diagonal import BlockDiagonal
from lightning_ot.nn.bounds import certify_weight, operator_norm_bound
from lightning_ot.nn.conv import OrthogonalConv2d, assembled_together, compose_kernels
from lightning_ot.nn.linear import BjorckOrthogonalization, OrthogonalLinear, bjorck_orthonormalize
from lightning_ot.nn.normalization import Normalize
from lightning_ot.nn.padding import CircularPaddedConv2d, circular_pad
from lightning_ot.nn.pooling import GlobalL2NormPool2d, InvertibleDownsampling, L2NormPool2d, l2_norm_pool2d
from lightning_ot.nn.residual import LipschitzResidual
from lightning_ot.nn.retraction import retract_weights_

__all__ = [
    "BjorckOrthogonalization",
    "BlockDiagonal",
    "CircularPaddedConv2d",
    "GlobalL2NormPool2d",
    "GroupSort",
    "InvertibleDownsampling",
    "L2NormPool2d",
    "LayerReport",
    "LipschitzReport",
    "LipschitzResidual",
    "MaxMin",
    "Normalize",
    "OrthogonalConv2d",
    "OrthogonalLinear",
    "assembled_together",
    "bjorck_orthonormalize",
    "cached_weights",
    "certify_weight",
    "circular_pad",
    "compose_kernels",
    "empirical_lipschitz",
    "gradient_norms",
    "input_lipschitz_factor",
    "l2_norm_pool2d",
    "lipschitz_audit",
    "max_min",
    "operator_norm_bound",
    "retract_weights_",
    "vanilla_export",
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


from lightning_ot.nn.audit import (  # noqa: E402
    LayerReport,
    LipschitzReport,
    empirical_lipschitz,
    gradient_norms,
    lipschitz_audit,
)
from lightning_ot.nn.export import vanilla_export  # noqa: E402
