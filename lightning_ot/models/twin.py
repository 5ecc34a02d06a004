"""The same architecture without Lipschitz constraints, for baselines and benchmarks."""

from __future__ import annotations

import copy

from torch import nn

from lightning_ot.nn import CircularPaddedConv2d, GlobalL2NormPool2d, GroupSort, L2NormPool2d, MaxMin
from lightning_ot.nn.export import exported_layer, plain_layer, replace_modules

__all__ = ["unconstrained_twin"]


def unconstrained_twin(
    model: nn.Module, activation: type[nn.Module] = nn.ReLU, copy_weights: bool = False
) -> nn.Module:
    """The same architecture with plain layers: the paper's unconstrained baseline.

    ``OrthogonalLinear`` -> ``nn.Linear``, ``OrthogonalConv2d`` -> ``nn.Conv2d`` (same shapes, stride,
    padding and padding mode; a circular one is a :class:`~lightning_ot.nn.CircularPaddedConv2d`,
    which pads as ``OrthogonalConv2d`` does; PyTorch's default initialization, or with ``copy_weights`` the
    model's current orthogonal weights, so that the twin starts where the constrained network
    starts: deep narrow plain networks often fail to train from the default initialization, e.g.
    :class:`~lightning_ot.models.NormPreservingConvNet`'s twin stays at chance), ``MaxMin`` / ``GroupSort`` -> ``activation()``,
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
        plain = exported_layer(module) if copy_weights else plain_layer(module)
        if isinstance(plain, nn.Conv2d) and plain.padding_mode == "circular":
            return CircularPaddedConv2d.from_conv2d(plain)
        if plain is not None:
            return plain
        if isinstance(module, MaxMin | GroupSort):
            return activation()
        if isinstance(module, L2NormPool2d):
            return nn.MaxPool2d(module.kernel_size, module.stride, module.padding)
        if isinstance(module, GlobalL2NormPool2d):
            return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        return None

    was_training = model.training
    model.eval()  # the weights to copy, computed without a graph
    try:
        twin = replace_modules(copy.deepcopy(model), replace)
    finally:
        model.train(was_training)
    return twin.train(was_training)
