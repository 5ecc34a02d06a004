"""The same architecture without Lipschitz constraints, for baselines and benchmarks."""

from __future__ import annotations

import copy

from torch import nn

from lightning_ot.nn import (
    GlobalL2NormPool2d,
    GroupSort,
    InvertibleDownsampling,
    L2NormPool2d,
    MaxMin,
    OrthogonalConv2d,
    OrthogonalLinear,
)
from lightning_ot.nn.export import replace_modules

__all__ = ["unconstrained_twin"]


def unconstrained_twin(model: nn.Module, activation: type[nn.Module] = nn.ReLU) -> nn.Module:
    """The same architecture with plain layers: the paper's unconstrained baseline.

    ``OrthogonalLinear`` -> ``nn.Linear``, ``OrthogonalConv2d`` -> ``nn.Conv2d`` (same shapes, stride
    and padding, default initialization), ``MaxMin`` / ``GroupSort`` -> ``activation()``,
    ``L2NormPool2d`` -> ``nn.MaxPool2d``, ``GlobalL2NormPool2d`` -> global average pooling,
    ``InvertibleDownsampling`` -> ``nn.PixelUnshuffle``. Other modules (input normalization, residual
    mixing, containers) are kept. The twin is not Lipschitz-constrained: train it without the
    Lipschitz audit (``OTClassifier(..., audit_lipschitz=False)``). ``model`` is left unchanged.

    Example:
        >>> from lightning_ot.models import LipschitzConvNet
        >>> twin = unconstrained_twin(LipschitzConvNet(1, 10, image_size=28))
        >>> twin(torch.rand(2, 1, 28, 28)).shape
        torch.Size([2, 10])
    """

    def replace(module: nn.Module) -> nn.Module | None:
        if isinstance(module, OrthogonalLinear):
            return nn.Linear(module.in_features, module.out_features, module.bias is not None)
        if isinstance(module, OrthogonalConv2d):
            return nn.Conv2d(
                module.in_channels,
                module.out_channels,
                module.kernel_size,
                stride=module.stride,
                padding=module.padding,
                bias=module.bias is not None,
            )
        if isinstance(module, MaxMin | GroupSort):
            return activation()
        if isinstance(module, L2NormPool2d):
            return nn.MaxPool2d(module.kernel_size, module.stride, module.padding)
        if isinstance(module, GlobalL2NormPool2d):
            return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        if isinstance(module, InvertibleDownsampling):
            return nn.PixelUnshuffle(module.factor)
        return None

    return replace_modules(copy.deepcopy(model), replace)
