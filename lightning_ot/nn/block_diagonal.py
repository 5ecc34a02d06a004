"""Block-diagonal composition: independent blocks on disjoint slices of the features."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["BlockDiagonal"]


class BlockDiagonal(nn.Module):
    """Apply each block to its own slice of the features and concatenate: ``(f_1(x_1), ..., f_g(x_g))``.

    With ``x = (x_1, ..., x_g)`` split along ``dim``, ``||f(x) - f(y)||^2 = sum_i ||f_i(x_i) -
    f_i(y_i)||^2 <= max_i L_i^2 ||x - y||^2``: the map is ``max_i L_i``-Lipschitz in L2 (1-Lipschitz
    when every block is), and its transposed Jacobian is block-diagonal, so it preserves gradient
    norms when every block does (blocks with orthonormal rows, such as
    :class:`~lightning_ot.nn.OrthogonalLinear` layers that do not widen, make it a co-isometry).

    The use is cost: orthonormalizing an ``m x n`` matrix (Björck's steps, the retraction after an
    optimizer step) is ``O(m^2 n)`` whatever the batch, and ``g`` blocks of ``m / g x n / g`` cost
    ``m^2 n / g^2`` together. Features are mixed across blocks by the layers before and after (a
    convolution mixes all channels, MaxMin pairs the two halves of its input).

    Args:
        blocks: the modules, applied in order to consecutive slices of ``dim``.
        split_sizes: the size of each block's slice; by default each block's ``in_features``.
        dim: the feature dimension that is split and concatenated.

    Shape:
        - input: (B, sum(split_sizes), *) with the split sizes at ``dim``
        - output: (B, sum of the blocks' output sizes at ``dim``, *)

    Example:
        >>> from lightning_ot.nn import OrthogonalLinear
        >>> layer = BlockDiagonal([OrthogonalLinear(6, 4), OrthogonalLinear(6, 4)])
        >>> x = torch.randn(3, 12, requires_grad=True)
        >>> layer(x).shape
        torch.Size([3, 8])
        >>> layer(x)[0, 5].backward()
        >>> round(x.grad[0].norm().item(), 4)
        1.0
    """

    def __init__(
        self, blocks: Sequence[nn.Module], split_sizes: Sequence[int] | None = None, dim: int = 1
    ) -> None:
        super().__init__()
        blocks = list(blocks)
        if not blocks:
            raise ValueError("`blocks` needs at least one module")
        if split_sizes is None:
            missing = [
                index
                for index, block in enumerate(blocks)
                if not isinstance(getattr(block, "in_features", None), int)
            ]
            if missing:
                raise ValueError(
                    f"`split_sizes` is needed: blocks {missing} have no integer `in_features` to split by"
                )
            split_sizes = [block.in_features for block in blocks]
        split_sizes = list(split_sizes)
        if len(split_sizes) != len(blocks) or any(int(size) != size or size < 1 for size in split_sizes):
            raise ValueError(
                f"`split_sizes` needs one positive integer per block ({len(blocks)}), got {split_sizes}"
            )
        self.blocks = nn.ModuleList(blocks)
        self.split_sizes = [int(size) for size in split_sizes]
        self.dim = dim

    @property
    def in_features(self) -> int:
        return sum(self.split_sizes)

    def forward(self, input: Tensor) -> Tensor:
        if not isinstance(input, torch.fx.Proxy) and input.shape[self.dim] != self.in_features:
            raise ValueError(
                f"BlockDiagonal expects {self.in_features} features ({self.split_sizes}) at dim {self.dim}, "
                f"got input of shape {tuple(input.shape)}"
            )
        # split, not narrow: its backward concatenates the slices' gradients once, where each
        # narrow's would write its own into a zero tensor of the input's size (indexed, not
        # unpacked, so that torch.fx can trace it)
        slices = input.split(self.split_sizes, self.dim)
        return torch.cat([block(slices[index]) for index, block in enumerate(self.blocks)], self.dim)

    def extra_repr(self) -> str:
        return f"split_sizes={self.split_sizes}, dim={self.dim}"
