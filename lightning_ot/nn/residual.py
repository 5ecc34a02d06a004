"""A 1-Lipschitz residual connection."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["LipschitzResidual"]


class LipschitzResidual(nn.Module):
    """``(1 - t) x + t branch(x)`` with a learned ``t = sigmoid(mixing)`` in (0, 1).

    A convex combination of the identity and a 1-Lipschitz ``branch`` is 1-Lipschitz (its constant
    is at most ``(1 - t) + t L_branch``). When ``t`` is small the block is close to the identity, which
    preserves gradient norms; the branch must keep the input's shape.

    Args:
        branch: the residual branch (1-Lipschitz, same output shape as its input).
        init_mixing: initial ``t``.

    Shape:
        - input: (B, *)
        - output: same shape

    Example:
        >>> block = LipschitzResidual(nn.Identity())
        >>> x = torch.randn(2, 3)
        >>> torch.allclose(block(x), x)
        True
    """

    def __init__(self, branch: nn.Module, init_mixing: float = 0.5) -> None:
        super().__init__()
        if not 0.0 < init_mixing < 1.0:
            raise ValueError(f"`init_mixing` must be in (0, 1), got {init_mixing}")
        self.branch = branch
        self.init_mixing = init_mixing
        self.mixing = nn.Parameter(torch.tensor(math.log(init_mixing / (1 - init_mixing))))

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.mixing.fill_(math.log(self.init_mixing / (1 - self.init_mixing)))

    @property
    def weight_of_branch(self) -> float:
        return float(torch.sigmoid(self.mixing.detach()))

    def forward(self, input: Tensor) -> Tensor:
        t = torch.sigmoid(self.mixing)
        return torch.lerp(input, self.branch(input), t)
