"""Orthogonal (norm-preserving) linear layers and the Björck orthonormalization behind them."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from lightning_ot.nn._cache import WeightCache

__all__ = ["BjorckOrthogonalization", "OrthogonalLinear", "bjorck_orthonormalize"]


_NORMALIZATION_SQUARINGS = 4


def bjorck_orthonormalize(weight: Tensor, iterations: int = 12, tolerance: float | None = 1e-3) -> Tensor:
    """Nearest (semi-)orthogonal matrix by Björck and Bowie's iteration (1971), batched.

    The matrix ``X`` (its wide orientation, ``m x n`` with ``m <= n``) is first divided by
    ``||G^16||_F^(1/32)`` with ``G = X X^T``, an upper bound on its spectral norm that exceeds it by a
    factor ``m^(1/64)`` at most (1.08 for ``m = 128``), so every singular value starts in (0, 1] and a
    well-conditioned matrix starts close to 1. Each step ``X <- (1.5 I - 0.5 X X^T) X`` maps a singular
    value ``s`` to ``1.5 s - 0.5 s^3``, which is at most 1 for every ``s`` in [0, 1]: the result has
    operator norm <= 1 whatever the number of steps (certified), and is orthogonal in the limit
    (tight). The steps run on the small Gram matrix, so a wide matrix costs two ``m x m x n`` products.

    The iteration stops early: at once when ``||X X^T - I||_F <= tolerance / 100``, or one step after
    it is ``<= tolerance`` (that last step brings every singular value within
    ``1.5 (tolerance / 2)^2`` of 1); ``None`` always runs all ``iterations``, as do
    ``torch.compile`` and weights on an accelerator (the test reads a number back to the host: on a
    GPU that synchronization costs more than the few extra matrix products it would save). The normalizing scalar is treated as a constant by autograd: the polar factor
    does not depend on the scale of ``X``.

    Args:
        weight: (*, out, in) matrix or batch of matrices.
        iterations: maximum number of Björck steps.
        tolerance: stop one step after the Gram matrix is this close to the identity (Frobenius),
            for every matrix of the batch (at once when 100 times closer).

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
    if tolerance is not None and tolerance < 0:
        raise ValueError(f"`tolerance` must be >= 0 or None, got {tolerance}")
    input_dtype = weight.dtype
    if input_dtype in (torch.float16, torch.bfloat16):
        weight = weight.float()
    wide = weight.shape[-2] <= weight.shape[-1]
    matrix = weight if wide else weight.mT
    gram = matrix @ matrix.mT
    tiny = torch.finfo(gram.dtype).tiny
    with torch.no_grad():
        # ||G^16||_F^(1/16) bounds the largest eigenvalue of G; powers of G / ||G||_F cannot overflow
        frobenius = gram.norm(dim=(-2, -1), keepdim=True).clamp_min(tiny)
        power = gram / frobenius
        for _ in range(_NORMALIZATION_SQUARINGS):
            power = power @ power
        exponent = 1.0 / 2**_NORMALIZATION_SQUARINGS
        norm_squared = (frobenius * power.norm(dim=(-2, -1), keepdim=True).pow(exponent)).clamp_min(tiny)
    gram = gram / norm_squared
    matrix = matrix / norm_squared.sqrt()
    eye = torch.eye(gram.shape[-1], dtype=gram.dtype, device=gram.device)
    early_stop = tolerance is not None and weight.device.type == "cpu" and not torch.compiler.is_compiling()
    # near-square: X <- 1.5 X - 0.5 (X X^T) X costs two products a step, fewer than the three of the
    # Gram form below, which pays off for wide matrices (n >= 1.5 m)
    direct = 2 * matrix.shape[-1] < 3 * matrix.shape[-2]
    factor: Tensor | None = None
    for step_index in range(iterations):
        last = step_index + 1 == iterations
        if early_stop and not last:
            with torch.no_grad():
                deviation = float((gram - eye).norm(dim=(-2, -1)).max())
            if deviation <= 0.01 * tolerance:
                break
            last = deviation <= tolerance
        if direct:
            matrix = torch.add(1.5 * matrix, gram @ matrix, alpha=-0.5)
            if last:
                break
            gram = matrix @ matrix.mT
            continue
        step = torch.add(1.5 * eye, gram, alpha=-0.5)
        factor = step if factor is None else step @ factor
        if last:
            break
        gram = step @ gram @ step
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
