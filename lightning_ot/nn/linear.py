"""Orthogonal (norm-preserving) linear layers and the Björck orthonormalization behind them."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from lightning_ot.nn._cache import WeightCache

__all__ = ["BjorckOrthogonalization", "OrthogonalLinear", "bjorck_orthonormalize"]


def bjorck_orthonormalize(weight: Tensor, iterations: int = 12) -> Tensor:
    """Nearest (semi-)orthogonal matrix by Björck and Bowie's iteration (1971), batched.

    The matrix ``X`` (its wide orientation) is first divided by ``||(X X^T)^2||_F^(1/4)``, an upper
    bound on its spectral norm, so every singular value starts in (0, 1]. Each step
    ``X <- (1.5 I - 0.5 X X^T) X`` maps a singular value ``s`` to ``1.5 s - 0.5 s^3``, which is at
    most 1 for every ``s >= 0``: the result has operator norm <= 1 whatever the number of iterations
    (certified), and is orthogonal in the limit (tight). The steps run on the small Gram matrix
    (``m x m`` for an ``m x n`` matrix with ``m <= n``), so a wide matrix costs two ``m x m x n``
    products in all.

    Args:
        weight: (*, out, in) matrix or batch of matrices.
        iterations: number of Björck steps.

    Returns:
        (*, out, in) matrices with orthonormal rows (out <= in) or columns (out > in).

    Example:
        >>> q = bjorck_orthonormalize(torch.eye(4) + 0.3 * torch.ones(4, 4), iterations=30)
        >>> torch.allclose(q @ q.T, torch.eye(4), atol=1e-4)
        True
    """
    if weight.ndim < 2:
        raise ValueError(f"`weight` must have at least 2 dimensions, got shape {tuple(weight.shape)}")
    if iterations < 0:
        raise ValueError(f"`iterations` must be >= 0, got {iterations}")
    input_dtype = weight.dtype
    if input_dtype in (torch.float16, torch.bfloat16):
        weight = weight.float()
    wide = weight.shape[-2] <= weight.shape[-1]
    matrix = weight if wide else weight.mT
    gram = matrix @ matrix.mT
    tiny = torch.finfo(gram.dtype).tiny
    norm_squared = (gram @ gram).norm(dim=(-2, -1), keepdim=True).sqrt().clamp_min(tiny)
    gram = gram / norm_squared
    eye = torch.eye(gram.shape[-1], dtype=gram.dtype, device=gram.device)
    factor: Tensor | None = None
    for step_index in range(iterations):
        step = 1.5 * eye - 0.5 * gram
        factor = step if factor is None else step @ factor
        if step_index + 1 < iterations:
            gram = step @ gram @ step
    matrix = matrix / norm_squared.sqrt()
    if factor is not None:
        matrix = factor @ matrix
    result = matrix if wide else matrix.mT
    return result.to(input_dtype)


class BjorckOrthogonalization(nn.Module):
    """Parametrization mapping an unconstrained matrix to its Björck orthonormalization.

    In eval mode (or without autograd) the result is cached until the matrix changes.
    """

    def __init__(self, iterations: int = 12) -> None:
        super().__init__()
        self.iterations = iterations
        self._cache = WeightCache()

    def forward(self, weight: Tensor) -> Tensor:
        return self._cache.get(self, (weight,), lambda: bjorck_orthonormalize(weight, self.iterations))

    def extra_repr(self) -> str:
        return f"iterations={self.iterations}"


class OrthogonalLinear(nn.Linear):
    """``nn.Linear`` whose weight is kept (semi-)orthogonal: 1-Lipschitz and norm-preserving.

    The weight is a parametrization of an unconstrained matrix (``parametrizations.weight.original``)
    by :func:`bjorck_orthonormalize`; its operator norm is <= 1 by construction. In eval mode the
    weight is computed once and cached until the parameters change.

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
