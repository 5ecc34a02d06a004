"""Export a 1-Lipschitz model to plain PyTorch layers (no parametrization, no lightning_ot needed)."""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn

from lightning_ot.nn.conv import OrthogonalConv2d
from lightning_ot.nn.linear import OrthogonalLinear
from lightning_ot.nn.pooling import InvertibleDownsampling

__all__ = ["exported_layer", "plain_layer", "replace_modules", "vanilla_export"]


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
            padding_mode=module.padding_mode,
        )
    if isinstance(module, InvertibleDownsampling):
        return nn.PixelUnshuffle(module.factor)
    return None


def exported_layer(module: nn.Module) -> nn.Module | None:
    """Like :func:`plain_layer`, holding the current (orthogonalized) weight and bias of ``module``."""
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


class _InliningTracer(torch.fx.Tracer):
    """Traces through ``nn.Linear``, ``nn.Conv2d``, ``nn.Flatten`` and ``nn.PixelUnshuffle`` too, so that
    the graph calls ``F.linear`` / ``F.conv2d`` on its weights directly: a module call costs more
    Python than the operation itself at batch 1. Subclasses, which may do more, stay modules.
    Buffers are read through the graph (not copied into it as constants), so that ``.to()`` moves
    them and what is computed from them alone can be folded."""

    proxy_buffer_attributes = True

    def is_leaf_module(self, module: nn.Module, module_qualified_name: str) -> bool:
        if type(module) in (nn.Linear, nn.Conv2d, nn.Flatten, nn.PixelUnshuffle):
            return False
        return super().is_leaf_module(module, module_qualified_name)


def _fold_constants(graph_module: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """Compute once what depends on parameters and buffers alone (``sigmoid(mixing)`` of the residual
    blocks, the broadcast views of ``Normalize``'s mean and std) and store it as a buffer."""
    values: dict[torch.fx.Node, object] = {}
    for node in graph_module.graph.nodes:
        if node.op == "get_attr":
            values[node] = _attribute(graph_module, node.target)
            continue
        inputs = node.all_input_nodes
        name = getattr(node.target, "__name__", str(node.target))
        foldable = (
            node.op in ("call_function", "call_method")
            and inputs
            and all(input in values for input in inputs)
            and not name.endswith("_")  # in place
            and "out" not in node.kwargs
        )
        if not foldable:
            continue
        args, kwargs = torch.fx.node.map_arg((node.args, node.kwargs), lambda input: values[input])
        with torch.no_grad():
            if node.op == "call_function":
                values[node] = node.target(*args, **kwargs)
            else:
                self, *rest = args
                values[node] = getattr(self, node.target)(*rest, **kwargs)
    folded = 0
    for node, value in values.items():
        if node.op == "get_attr" or not isinstance(value, torch.Tensor):
            continue
        if all(user in values for user in node.users):
            continue
        name = f"_folded_{folded}"
        folded += 1
        graph_module.register_buffer(name, value.detach().clone())
        with graph_module.graph.inserting_before(node):
            constant = graph_module.graph.get_attr(name)
        node.replace_all_uses_with(constant)
    graph_module.graph.eliminate_dead_code()
    return graph_module


def _flatten_attributes(graph_module: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """Move the parameters and buffers that the graph reads onto the root, under flat names.

    ``getattr(self.layers, "1").weight`` costs three ``nn.Module.__getattr__`` calls at every
    forward, ``self.layers_1_weight`` one: at batch 1 those lookups cost as much as the operations.
    """
    taken = {name for name, _ in graph_module.named_parameters()} | {
        n for n, _ in graph_module.named_buffers()
    }
    for node in graph_module.graph.nodes:
        if node.op != "get_attr" or "." not in node.target:
            continue
        value = _attribute(graph_module, node.target)
        name = node.target.replace(".", "_")
        while name in taken or hasattr(graph_module, name):
            name += "_"
        taken.add(name)
        if isinstance(value, nn.Parameter):
            graph_module.register_parameter(name, value)
        elif isinstance(value, torch.Tensor):
            graph_module.register_buffer(name, value)
        else:
            setattr(graph_module, name, value)
        node.target = name
    # a new GraphModule keeps only the attributes and submodules that the graph still uses
    return torch.fx.GraphModule(graph_module, graph_module.graph, graph_module.__class__.__name__)


def _attribute(module: nn.Module, target: str) -> object:
    value: object = module
    for part in target.split("."):
        value = getattr(value, part)
    return value


def vanilla_export(model: nn.Module) -> torch.fx.GraphModule:
    """An equivalent model made of plain ``nn.Linear`` / ``nn.Conv2d`` layers and torch operations.

    Orthogonal layers become ``nn.Linear`` / ``nn.Conv2d`` holding their current (orthogonalized)
    weight, :class:`InvertibleDownsampling` becomes ``nn.PixelUnshuffle``, and the result is traced
    with ``torch.fx`` so that activations, poolings, residual mixing and normalization are inlined as
    torch operations (linear layers and convolutions as ``F.linear`` / ``F.conv2d`` calls on the
    weights they hold, what depends on parameters alone computed once). The returned
    ``GraphModule`` is in eval mode, has no parametrization, can be saved with ``torch.save`` and
    loaded where lightning_ot is not installed, and exports to ONNX with ``torch.onnx.export`` (both
    the ``dynamo=True`` exporter and the legacy ``dynamo=False`` one; the tests run the files in
    onnxruntime). The input model is left unchanged.

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
        plain = replace_modules(copy.deepcopy(model), exported_layer)
    finally:
        model.train(was_training)
    graph = _InliningTracer().trace(plain)
    # the GraphModule pickles its tracer class, which must not need lightning_ot to load
    graph._tracer_cls = None
    # postponed annotations (strings) would become unpicklable globals of the generated code
    for node in graph.nodes:
        node.type = None
    graph_module = _fold_constants(torch.fx.GraphModule(plain, graph, type(plain).__name__))
    return _flatten_attributes(graph_module).eval()
