"""Gradient-norm-preserving activations: MaxMin and GroupSort (Anil et al., ICML 2019)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["GroupSort", "MaxMin", "max_min"]


class _MaxMinFunction(torch.autograd.Function):
    """MaxMin with one saved mask (half the input size) and a backward of two elementwise ops.

    ``torch.where`` with a boolean condition is not vectorized on CPU (about 20x slower than
    ``torch.maximum``), so the forward writes ``maximum`` / ``minimum`` straight into the two halves
    of the output and keeps the mask ``m = (a >= b)`` as 0/1 floats; the backward is
    ``grad_a = lerp(grad_min, grad_max, m)`` and ``grad_b = lerp(grad_max, grad_min, m)``, each written
    into its half of the result (``lerp`` with a weight of exactly 0 or 1 returns an endpoint exactly).
    """

    @staticmethod
    def forward(ctx: Any, input: Tensor, dim: int) -> Tensor:
        first, second = input.chunk(2, dim=dim)
        output = torch.empty_like(input, memory_format=torch.contiguous_format)
        upper, lower = output.chunk(2, dim=dim)
        torch.maximum(first, second, out=upper)
        torch.minimum(first, second, out=lower)
        keep = torch.ge(first, second, out=torch.empty_like(upper))
        ctx.save_for_backward(keep)
        ctx.dim = dim
        return output

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor, None]:
        (keep,) = ctx.saved_tensors
        grad_upper, grad_lower = grad_output.chunk(2, dim=ctx.dim)
        if torch.is_grad_enabled():
            # double backward: out= variants are not differentiable
            grad_first = torch.lerp(grad_lower, grad_upper, keep)
            grad_second = torch.lerp(grad_upper, grad_lower, keep)
            return torch.cat([grad_first, grad_second], dim=ctx.dim), None
        grad_input = torch.empty_like(grad_output, memory_format=torch.contiguous_format)
        grad_first, grad_second = grad_input.chunk(2, dim=ctx.dim)
        torch.lerp(grad_lower, grad_upper, keep, out=grad_first)
        torch.lerp(grad_upper, grad_lower, keep, out=grad_second)
        return grad_input, None


def max_min(input: Tensor, dim: int = 1) -> Tensor:
    """Functional :class:`MaxMin`: ``cat(max(a, b), min(a, b))`` for the two halves ``a, b`` of ``dim``.

    Example:
        >>> max_min(torch.tensor([[1.0, -2.0, 3.0, 0.0]]))
        tensor([[ 3.,  0.,  1., -2.]])
    """
    if isinstance(input, torch.fx.Proxy):
        first, second = input.chunk(2, dim=dim)
        return torch.cat([torch.maximum(first, second), torch.minimum(first, second)], dim=dim)
    if input.shape[dim] % 2:
        raise ValueError(f"MaxMin needs an even size at dim {dim}, got shape {tuple(input.shape)}")
    if torch.compiler.is_compiling() or not (torch.is_grad_enabled() and input.requires_grad):
        first, second = input.chunk(2, dim=dim)
        return torch.cat([torch.maximum(first, second), torch.minimum(first, second)], dim=dim)
    return _MaxMinFunction.apply(input, dim)


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
