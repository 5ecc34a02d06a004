"""Gradient-norm-preserving activations: MaxMin and GroupSort (Anil et al., ICML 2019)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from lightning_ot.nn._function import Function
from lightning_ot.nn._transforms import is_transformed

__all__ = ["GroupSort", "MaxMin", "max_min"]


class _MaxMinFunction(Function):
    """MaxMin with one saved mask (half the input size) and a backward of two elementwise ops.

    ``torch.where`` with a boolean condition is not vectorized on CPU (about 20x slower than
    ``torch.maximum``), so the forward writes ``maximum`` / ``minimum`` straight into the two halves
    of the output and returns the mask ``m = (a >= b)`` as 0/1 floats (a second, non-differentiable
    output: ``torch.func`` wants what the backward needs returned, not stored by the forward); the
    backward is ``grad_a = lerp(grad_min, grad_max, m)`` and ``grad_b = lerp(grad_max, grad_min, m)``,
    each written into its half of the result (``lerp`` with a weight of exactly 0 or 1 returns an
    endpoint exactly). The forward-mode rule (``jvp``) moves the tangent the same way as the input.
    Under ``torch.vmap`` the vmapped dimension is moved to the front and the function applied to the
    whole batch (``out=`` operations have no batching rule).
    """

    @staticmethod
    def forward(input: Tensor, dim: int) -> tuple[Tensor, Tensor]:
        first, second = input.chunk(2, dim=dim)
        output = torch.empty_like(input, memory_format=torch.contiguous_format)
        upper, lower = output.chunk(2, dim=dim)
        torch.maximum(first, second, out=upper)
        torch.minimum(first, second, out=lower)
        keep = torch.ge(first, second, out=torch.empty_like(upper))
        return output, keep

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Tensor, int], output: tuple[Tensor, Tensor]) -> None:
        _, keep = output
        ctx.mark_non_differentiable(keep)
        ctx.set_materialize_grads(False)  # no tensor of zeros for the mask's unused gradient
        ctx.save_for_backward(keep)
        ctx.save_for_forward(keep)
        ctx.dim = inputs[1]

    @staticmethod
    def backward(
        ctx: Any, grad_output: Tensor | None, grad_keep: Tensor | None
    ) -> tuple[Tensor | None, None]:
        if grad_output is None:
            return None, None
        (keep,) = ctx.saved_tensors
        return _select_halves(grad_output, keep, ctx.dim), None

    @staticmethod
    def jvp(ctx: Any, input_tangent: Tensor, dim_tangent: None) -> tuple[Tensor, None]:
        (keep,) = ctx.saved_tensors
        return _select_halves(input_tangent, keep, ctx.dim), None

    @staticmethod
    def vmap(
        info: Any, in_dims: tuple[int | None, None], input: Tensor, dim: int
    ) -> tuple[tuple[Tensor, Tensor], tuple[int, int]]:
        input = input.movedim(in_dims[0], 0)
        return _MaxMinFunction.apply(input, dim if dim < 0 else dim + 1), (0, 0)


def _select_halves(values: Tensor, keep: Tensor, dim: int) -> Tensor:
    """``cat(lerp(b, a, m), lerp(a, b, m))`` for the halves ``a, b`` of ``values`` at ``dim``.

    MaxMin's Jacobian swaps the two entries of each pair where ``m = 0`` and keeps them where
    ``m = 1``: it is its own transpose, so this routes a tangent forward and a gradient backward alike.
    """
    first, second = values.chunk(2, dim=dim)
    if torch.is_grad_enabled() or is_transformed(values):
        # double backward or torch.func transforms: out= variants are neither differentiable nor
        # batched by vmap
        return torch.cat([torch.lerp(second, first, keep), torch.lerp(first, second, keep)], dim=dim)
    result = torch.empty_like(values, memory_format=torch.contiguous_format)
    upper, lower = result.chunk(2, dim=dim)
    torch.lerp(second, first, keep, out=upper)
    torch.lerp(first, second, keep, out=lower)
    return result


def _traced() -> bool:
    """Under ``torch.compile`` / ``torch.export`` or the TorchScript tracer of the legacy ONNX exporter."""
    return torch.compiler.is_compiling() or torch.jit.is_tracing()


def max_min(input: Tensor, dim: int = 1) -> Tensor:
    """Functional :class:`MaxMin`: ``cat(max(a, b), min(a, b))`` for the two halves ``a, b`` of ``dim``.

    Example:
        >>> max_min(torch.tensor([[1.0, -2.0, 3.0, 0.0]]))
        tensor([[ 3.,  0.,  1., -2.]])
    """
    if isinstance(input, torch.fx.Proxy):
        first, second = input.chunk(2, dim=dim)
        return torch.cat([torch.maximum(first, second), torch.minimum(first, second)], dim=dim)
    if not torch.jit.is_tracing() and input.shape[dim] % 2:
        raise ValueError(f"MaxMin needs an even size at dim {dim}, got shape {tuple(input.shape)}")
    if _traced() or not (torch.is_grad_enabled() and input.requires_grad):
        first, second = input.chunk(2, dim=dim)
        return torch.cat([torch.maximum(first, second), torch.minimum(first, second)], dim=dim)
    return _MaxMinFunction.apply(input, dim)[0]


class MaxMin(nn.Module):
    """Split the channels in two halves ``a, b`` and return ``cat(max(a, b), min(a, b))``.

    A permutation of its input at every point: 1-Lipschitz and gradient-norm preserving. Training
    uses a custom autograd function that saves one mask (half the size of the input) and writes
    both halves of its results in place with vectorized elementwise ops: about the cost of ReLU.

    Args:
        dim: the channel dimension (its size must be even).

    Shape:
        - input: (*, C, *) with C even at ``dim``
        - output: same shape

    Example:
        >>> MaxMin()(torch.tensor([[1.0, -2.0, 3.0, 0.0]]))
        tensor([[ 3.,  0.,  1., -2.]])
    """

    lipschitz_bound = 1.0

    def __init__(self, dim: int = 1) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, input: Tensor) -> Tensor:
        return max_min(input, self.dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class GroupSort(nn.Module):
    """Sort the channels within consecutive groups of ``group_size`` (GroupSort-2 is MaxMin up to order).

    Shape:
        - input: (B, C, *) with C divisible by ``group_size``
        - output: same shape

    Example:
        >>> GroupSort(2)(torch.tensor([[1.0, 2.0, 4.0, 3.0]]))
        tensor([[2., 1., 4., 3.]])
    """

    lipschitz_bound = 1.0

    def __init__(self, group_size: int = 2) -> None:
        super().__init__()
        if group_size < 2:
            raise ValueError(f"`group_size` must be >= 2, got {group_size}")
        self.group_size = group_size

    def forward(self, input: Tensor) -> Tensor:
        if not isinstance(input, torch.fx.Proxy) and input.shape[1] % self.group_size:
            raise ValueError(
                f"GroupSort({self.group_size}) needs channels divisible by it, got {input.shape[1]}"
            )
        grouped = input.unflatten(1, (-1, self.group_size))
        return grouped.sort(dim=2, descending=True).values.flatten(1, 2)

    def extra_repr(self) -> str:
        return f"group_size={self.group_size}"
