"""Orthogonal (norm-preserving) linear layers."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

__all__ = ["BjorckOrthogonalization", "OrthogonalLinear", "bjorck_orthonormalize"]


def bjorck_orthonormalize(weight: Tensor, iterations: int = 12) -> Tensor:
    """Nearest (semi-)orthogonal matrix by Björck and Bowie's iteration (1971).

    The weight is first divided by its Frobenius norm, so every singular value starts in (0, 1]; the
    map ``s -> 1.5 s - 0.5 s^3`` then raises each one towards 1 and never above it, so the result has
    operator norm <= 1 whatever the number of iterations, and is orthogonal in the limit.

    Args:
        weight: (out, in) matrix.
        iterations: number of Björck steps.

    Returns:
        (out, in) matrix with orthonormal rows (out <= in) or columns (out > in).

    Example:
        >>> q = bjorck_orthonormalize(torch.randn(4, 4), iterations=30)
        >>> torch.allclose(q @ q.T, torch.eye(4), atol=1e-4)
        True
    """
    wide = weight.shape[0] <= weight.shape[1]
    matrix = weight if wide else weight.T
    matrix = matrix / matrix.norm().clamp_min(torch.finfo(matrix.dtype).tiny)
    for _ in range(iterations):
        matrix = 1.5 * matrix - 0.5 * (matrix @ matrix.T) @ matrix
    return matrix if wide else matrix.T


class BjorckOrthogonalization(nn.Module):
    """Parametrization mapping an unconstrained matrix to its Björck orthonormalization."""

    def __init__(self, iterations: int = 12) -> None:
        super().__init__()
        self.iterations = iterations

    def forward(self, weight: Tensor) -> Tensor:
        return bjorck_orthonormalize(weight, self.iterations)

    def extra_repr(self) -> str:
        return f"iterations={self.iterations}"


class OrthogonalLinear(nn.Linear):
    """``nn.Linear`` whose weight is kept (semi-)orthogonal: 1-Lipschitz and norm-preserving.

    The weight is a parametrization of an unconstrained matrix (``parametrizations.weight.original``);
    wrap inference in ``torch.nn.utils.parametrize.cached()`` to compute it once.

    Shape:
        - input: (*, in_features)
        - output: (*, out_features)

    Example:
        >>> layer = OrthogonalLinear(16, 16)
        >>> x = torch.randn(4, 16)
        >>> torch.allclose(layer(x) - layer.bias, x @ layer.weight.T, atol=1e-6)
        True
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        iterations: int = 12,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        parametrize.register_parametrization(self, "weight", BjorckOrthogonalization(iterations))

    def reset_parameters(self) -> None:
        if parametrize.is_parametrized(self, "weight"):
            weight = self.parametrizations.weight.original
        else:
            weight = self.weight
        nn.init.orthogonal_(weight)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    @property
    def lipschitz_bound(self) -> float:
        return 1.0
