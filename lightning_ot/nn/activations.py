"""Gradient-norm-preserving activations: MaxMin and GroupSort (Anil et al., ICML 2019)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["GroupSort", "MaxMin"]


class MaxMin(nn.Module):
    """Split the channels in two halves ``a, b`` and return ``cat(max(a, b), min(a, b))``.

    A permutation of its input at every point: 1-Lipschitz and gradient-norm preserving.

    Args:
        dim: the channel dimension (its size must be even).

    Shape:
        - input: (*, C, *) with C even at ``dim``
        - output: same shape

    Example:
        >>> MaxMin()(torch.tensor([[1.0, -2.0, 3.0, 0.0]]))
        tensor([[ 3.,  0.,  1., -2.]])
    """

    def __init__(self, dim: int = 1) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, input: Tensor) -> Tensor:
        if input.shape[self.dim] % 2:
            raise ValueError(f"MaxMin needs an even size at dim {self.dim}, got shape {tuple(input.shape)}")
        first, second = input.chunk(2, dim=self.dim)
        return torch.cat([torch.maximum(first, second), torch.minimum(first, second)], dim=self.dim)

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

    def __init__(self, group_size: int = 2) -> None:
        super().__init__()
        if group_size < 2:
            raise ValueError(f"`group_size` must be >= 2, got {group_size}")
        self.group_size = group_size

    def forward(self, input: Tensor) -> Tensor:
        channels = input.shape[1]
        if channels % self.group_size:
            raise ValueError(f"GroupSort({self.group_size}) needs channels divisible by it, got {channels}")
        grouped = input.reshape(
            input.shape[0], channels // self.group_size, self.group_size, *input.shape[2:]
        )
        return grouped.sort(dim=2, descending=True).values.reshape(input.shape)

    def extra_repr(self) -> str:
        return f"group_size={self.group_size}"
