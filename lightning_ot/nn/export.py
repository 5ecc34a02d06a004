"""Export a 1-Lipschitz model to plain PyTorch layers (no parametrization, no lightning_ot needed)."""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn

from lightning_ot.nn.conv import OrthogonalConv2d
from lightning_ot.nn.linear import OrthogonalLinear
from lightning_ot.nn.pooling import InvertibleDownsampling

__all__ = ["plain_layer", "replace_modules", "vanilla_export"]


def replace_modules(model: nn.Module, replace: Callable[[nn.Module], nn.Module | None]) -> nn.Module:
    """Replace, in place and recursively, every submodule for which ``replace`` returns a module.

    ``replace`` is tried on a module before its children; a replaced module's children are not
    visited. Returns ``model`` (or its replacement when the root itself is replaced).
    """
    replacement = replace(model)
    if replacement is not None:
        return replacement
    for name, child in list(model.named_children()):
        new_child = replace_modules(child, replace)
        if new_child is not child:
            setattr(model, name, new_child)
    return model


def plain_layer(module: nn.Module) -> nn.Module | None:
    """A freshly initialized ``nn.Linear`` / ``nn.Conv2d`` / ``nn.PixelUnshuffle`` of the same shape as
    an :class:`OrthogonalLinear` / :class:`OrthogonalConv2d` / :class:`InvertibleDownsampling`, or
    ``None`` for any other module."""
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
    if isinstance(module, InvertibleDownsampling):
        return nn.PixelUnshuffle(module.factor)
    return None


def _exported_layer(module: nn.Module) -> nn.Module | None:
    plain = plain_layer(module)
    if plain is None or not isinstance(module, OrthogonalLinear | OrthogonalConv2d):
        return plain
    weight = module.weight.detach()
    plain = plain.to(device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        plain.weight.copy_(weight)
        if module.bias is not None:
            plain.bias.copy_(module.bias)
    return plain


def vanilla_export(model: nn.Module) -> torch.fx.GraphModule:
    """An equivalent model made of plain ``nn.Linear`` / ``nn.Conv2d`` layers and torch operations.

    Orthogonal layers become ``nn.Linear`` / ``nn.Conv2d`` holding their current (orthogonalized)
    weight, :class:`InvertibleDownsampling` becomes ``nn.PixelUnshuffle``, and the result is traced
    with ``torch.fx`` so that activations, poolings, residual mixing and normalization are inlined as
    torch operations. The returned ``GraphModule`` is in eval mode, has no parametrization, can be
    saved with ``torch.save`` and loaded where lightning_ot is not installed, and exports to ONNX
    with ``torch.onnx.export`` (both the ``dynamo=True`` exporter and the legacy ``dynamo=False`` one;
    the tests run the files in onnxruntime). The input model is left unchanged.

    Args:
        model: any module; lightning_ot layers are converted, other layers are kept.

    Example:
        >>> from lightning_ot.models import LipschitzMLP
        >>> model = LipschitzMLP(16, 3, hidden_features=(8,)).eval()
        >>> plain = vanilla_export(model)
        >>> x = torch.randn(2, 16)
        >>> torch.allclose(plain(x), model(x), atol=1e-5)
        True
    """
    was_training = model.training
    model.eval()
    try:
        plain = replace_modules(copy.deepcopy(model), _exported_layer)
    finally:
        model.train(was_training)
    graph_module = torch.fx.symbolic_trace(plain)
    # postponed annotations (strings) would become unpicklable globals of the generated code
    for node in graph_module.graph.nodes:
        node.type = None
    graph_module.recompile()
    return graph_module.eval()
