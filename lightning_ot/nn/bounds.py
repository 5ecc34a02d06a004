"""Rigorous operator-norm bounds of a weight's actual floating-point values, and certified rescaling.

A certificate is a proof about the weights that the network really holds: float32 numbers, not the
exact orthogonal matrices that Björck's iteration or BCOP would give in exact arithmetic (in float32
their operator norms reach 1 + 2e-5). :func:`operator_norm_bound` returns a number that is, in exact
arithmetic on the given values, at least the L2 operator norm of the matrix or of the convolution on
the infinite plane (which bounds every zero padding and every image size); :func:`certify_weight`
rescales a weight until that bound is <= 1.

The bounds, for a stride-1 kernel ``K`` (``out x in x k x k``, taps ``K_q``):

* The convolution is a multichannel Toeplitz operator with symbol ``K^(w) = sum_q K_q e^{i w.q}``, and
  its norm on the infinite plane is ``sup_w ||K^(w)||_2``. The Hermitian symbol ``K^(w)^* K^(w) =
  sum_d A(d) e^{i w.d}`` has the kernel's autocorrelation ``A(d) = sum_q K_q^T K_{q+d}`` as
  coefficients (``A(-d) = A(d)^T``), so
  ``||K||^2 <= lambda_max(A(0)) + sum_{d != 0} ||A(d)||_2`` (Weyl's inequality and the triangle
  inequality). The smaller side is used: ``K K^*`` has the same nonzero spectrum, with the
  coefficients ``sum_q K_q K_{q+d}^T``. A matrix is the case ``k = 1``: ``||W||^2 = lambda_max(W W^T)``.
* Zero padding restricts the input to the image and the output to the output grid: the padded
  convolution is ``R T E`` with ``E`` (extension by zeros) and ``R`` (restriction) of norm 1.
* A stride ``s`` convolution equals a stride-1 convolution of the space-to-depth input (a
  permutation of its entries, hence an isometry) with the polyphase kernel ``K'[o, (i, r), a] =
  K[o, i, s a + r]`` over ``in * s^2`` channels, of size ``ceil(k / s)``.
* ``lambda_max(S)`` of a symmetric matrix is bounded through a Cholesky factor ``L`` of ``c I - S``
  (``c`` just above the computed eigenvalue): ``lambda_max(S) <= c + ||c I - S - L L^T||_2``, since
  ``L L^T`` is positive semi-definite whatever rounding produced ``L``; ``||X||_2`` is
  ``sqrt(lambda_max(X X^T))``. This is exact to a few float64 rounding errors, unlike the Frobenius
  norm, which would count the float32 noise of every entry.
* Everything is computed in float64 from the weight's exact values, and every computed quantity is
  inflated by the worst-case rounding error of its float64 computation: an inner product of ``n``
  terms is within ``gamma_n sum |x_i y_i|`` of the exact one, ``gamma_n = n u / (1 - n u)``,
  ``u = 2^-53`` (Higham, *Accuracy and Stability of Numerical Algorithms*, 2nd ed., 2002, Section 3.1,
  eq. 3.13), so a product ``X Y^T`` is within ``gamma_n ||X||_F ||Y||_F`` of the exact one in
  Frobenius norm; norms and sums of nonnegative terms are inflated by their own ``gamma``.

The measured differences (``benchmarks/certified_norms.py``): the bound equals the norm of a matrix to
1e-12; for a float32 orthogonal kernel it exceeds the norm by a few 1e-6 (the triangle inequality
over the offsets, applied to float32 rounding noise). Cost: in float64, a few products and
eigenvalue problems of the smaller channel count per kernel offset (11 s for the ~25M-weight
``LipschitzResNet`` on one CPU thread, paid once each time the eval weights are recomputed).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

__all__ = ["certify_weight", "operator_norm_bound", "polyphase_kernel"]

_UNIT_ROUNDOFF = 2.0**-53  # float64
_MAX_ATTEMPTS = 40


def _gamma(count: int) -> float:
    """Higham's ``gamma_n = n u / (1 - n u)`` for float64."""
    product = count * _UNIT_ROUNDOFF
    if product >= 0.5:
        raise ValueError(f"too many terms ({count}) for a float64 rounding bound")
    return product / (1.0 - product)


def polyphase_kernel(kernel: Tensor, stride: int) -> Tensor:
    """The stride-1 kernel that a stride-``s`` convolution is on the space-to-depth input.

    ``conv2d(x, kernel, stride=s)`` equals ``conv2d(pixel_unshuffle(x, s), polyphase_kernel(kernel, s))``
    on the infinite plane (and, with the padding handled the same way, on images).

    Args:
        kernel: (out, in, k, k) kernel.
        stride: the convolution's stride ``s``.

    Returns:
        (out, in * s^2, ceil(k / s), ceil(k / s)) kernel, the input channels ordered as
        ``nn.PixelUnshuffle`` orders them.

    Example:
        >>> kernel = torch.randn(4, 2, 3, 3)
        >>> x = torch.randn(1, 2, 8, 8)
        >>> strided = torch.nn.functional.conv2d(x, kernel, stride=2)
        >>> phases = torch.nn.functional.pixel_unshuffle(x, 2)
        >>> torch.allclose(
        ...     torch.nn.functional.conv2d(phases, polyphase_kernel(kernel, 2))[..., :3, :3],
        ...     strided,
        ...     atol=1e-5,
        ... )
        True
    """
    if kernel.ndim != 4:
        raise ValueError(f"`kernel` must have shape (out, in, k, k), got {tuple(kernel.shape)}")
    if stride < 1:
        raise ValueError(f"`stride` must be a positive integer, got {stride}")
    if stride == 1:
        return kernel
    height, width = kernel.shape[-2:]
    padded = F.pad(kernel, (0, -width % stride, 0, -height % stride))
    return rearrange(padded, "o i (a r) (b t) -> o (i r t) a b", r=stride, t=stride)


def _frobenius(matrices: Tensor) -> Tensor:
    """Frobenius norms of a batch (*, m, n) as square roots of sums of squares (nonnegative sums)."""
    return matrices.square().sum(dim=(-2, -1)).sqrt()


def _round_up(value: float, terms: int = 4) -> float:
    """``value`` plus the rounding error of a float64 expression of ``terms`` operations on it."""
    return value + abs(value) * 2 * _gamma(terms) + 1e-300


def _largest_eigenvalue_bounds(matrices: Tensor, errors: Tensor) -> Tensor:
    """Upper bounds of ``lambda_max(S)`` for every symmetric ``S`` within ``errors`` (spectral norm) of each
    float64 matrix of the batch (*, m, m).

    A Cholesky factor ``L`` of ``c I - S~`` (``c`` just above the computed largest eigenvalue, ``S~``
    the symmetrized matrix) proves ``lambda_max(S) <= c + ||c I - S~ - L L^T||_2 + error``: ``L L^T``
    is positive semi-definite for any ``L`` (Weyl). The residual is computed in float64 and inflated
    by its own rounding bound (``gamma_m ||L||_F^2``, Higham, eq. 3.13), so the result is exact
    to a few float64 rounding errors of the matrix.
    """
    size = matrices.shape[-1]
    identity = torch.eye(size, dtype=torch.float64, device=matrices.device)
    symmetric = (matrices + matrices.mT) / 2
    scale = _frobenius(symmetric)
    # what symmetrizing rounded, and the subtraction c I - S~ below will round
    errors = errors + 2 * _UNIT_ROUNDOFF * scale
    estimate = torch.linalg.eigvalsh(symmetric)[..., -1]
    gap = 16 * size * _UNIT_ROUNDOFF * scale.clamp_min(1e-300)
    bounds = torch.full_like(estimate, math.inf)
    pending = torch.ones_like(estimate, dtype=torch.bool)
    for _ in range(_MAX_ATTEMPTS):
        shift = estimate + gap
        shifted = shift[..., None, None] * identity - symmetric
        factor, info = torch.linalg.cholesky_ex(shifted)
        residual = _frobenius(shifted - factor @ factor.mT)
        rounding = _gamma(size) * _frobenius(factor).square() + 2 * _UNIT_ROUNDOFF * _frobenius(shifted)
        value = shift + (residual + rounding + errors) * (1 + 2 * _gamma(size * size + 4))
        value = value + value.abs() * 4 * _UNIT_ROUNDOFF
        done = pending & (info == 0) & torch.isfinite(value)
        bounds = torch.where(done, value, bounds)
        pending = pending & ~done
        if not bool(pending.any()):
            break
        gap = gap * 4
    # always valid (lambda_max(S) <= ||S||_F): only reached for matrices that are not finite
    fallback = (scale + errors) * (1 + 2 * _gamma(size * size + 4))
    return torch.where(pending, fallback, bounds)


def _spectral_norm_bounds(matrices: Tensor, errors: Tensor) -> Tensor:
    """Upper bounds of ``||X||_2`` for every ``X`` within ``errors`` (spectral norm) of each float64
    matrix of the batch (*, m, n): ``sqrt(lambda_max)`` of the smaller Gram matrix, with its rounding."""
    if matrices.shape[-2] > matrices.shape[-1]:
        matrices = matrices.mT
    gram = matrices @ matrices.mT
    gram_errors = _gamma(matrices.shape[-1]) * _frobenius(matrices).square() * (1 + 4 * _UNIT_ROUNDOFF)
    squared = _largest_eigenvalue_bounds(gram, gram_errors).clamp_min(0)
    return (squared.sqrt() * (1 + 2 * _UNIT_ROUNDOFF) + errors) * (1 + 4 * _UNIT_ROUNDOFF)


def _squared_norm_bound(kernel: Tensor) -> float:
    """Upper bound of ``||conv(., kernel)||^2`` on the infinite plane (stride 1), see the module docstring."""
    kernel = kernel.detach().to(torch.float64)
    out_channels, in_channels, height, width = kernel.shape
    # the Gram side: the smaller of out (K K^*) and in (K^* K) channels
    taps = kernel if out_channels <= in_channels else kernel.transpose(0, 1)
    if height == width == 1:
        return float(_spectral_norm_bounds(taps[:, :, 0, 0], torch.zeros(()))) ** 2 * (1 + 4 * _UNIT_ROUNDOFF)
    # A(d) = sum_q K_q K_{q+d}^T for d >= 0 in lexicographic order (A(-d) = A(d)^T has the same
    # norm), each one matrix product; its rounding error is at most gamma_N ||first||_F ||second||_F
    # in Frobenius norm (Higham, eq. 3.13, and Cauchy-Schwarz)
    pairs = [(taps, taps)]
    for row in range(height):
        for column in range(-width + 1, width):
            if row > 0 or column > 0:
                first = taps[:, :, : height - row, max(0, -column) : width - max(0, column)]
                second = taps[:, :, row:, max(0, column) : width + min(0, column)]
                pairs.append((first, second))
    firsts = [first.flatten(1) for first, _ in pairs]
    seconds = [second.flatten(1) for _, second in pairs]
    errors = torch.stack(
        [
            _gamma(a.shape[1]) * _frobenius(a) * _frobenius(b) * (1 + 8 * _UNIT_ROUNDOFF)
            for a, b in zip(firsts, seconds, strict=True)
        ]
    )
    centre = firsts[0] @ firsts[0].T
    squared = _largest_eigenvalue_bounds(centre, errors[0])
    off_centre = torch.stack([a @ b.T for a, b in zip(firsts[1:], seconds[1:], strict=True)])
    norms = _spectral_norm_bounds(off_centre, errors[1:])
    # the sum of nonnegative terms, and lambda_max(A(0)) itself, rounded up
    return _round_up(float(squared) + 2 * float(norms.sum()), len(pairs) + 4)


def _stride_one_kernel(weight: Tensor, stride: int | tuple[int, int]) -> Tensor:
    """The (out, in', k', k') stride-1 kernel of the same operator norm (a matrix is a 1x1 kernel)."""
    if isinstance(stride, tuple | list):
        if len(stride) != 2 or stride[0] != stride[1]:
            raise ValueError(f"`stride` must be an int or a square pair, got {stride}")
        stride = stride[0]
    if weight.ndim == 2:
        if stride != 1:
            raise ValueError(f"a matrix has no stride, got stride={stride}")
        return weight[:, :, None, None]
    if weight.ndim == 4:
        return polyphase_kernel(weight, int(stride))
    raise ValueError(
        f"`weight` must be a (out, in) matrix or (out, in, k, k) kernel, got {tuple(weight.shape)}"
    )


def _tap_norm_sum(kernel: Tensor) -> float:
    """``sum_q ||K_q||_F`` of a float64 stride-1 kernel, rounded up: it bounds ``||conv(., K)||``."""
    taps = kernel.permute(2, 3, 0, 1)
    return _round_up(
        float(_frobenius(taps).sum()), taps.shape[-1] * taps.shape[-2] + kernel.shape[-1] ** 2 + 2
    )


def operator_norm_bound(weight: Tensor, stride: int | tuple[int, int] = 1) -> float:
    """A rigorous upper bound of the L2 operator norm of a matrix or a 2-D convolution kernel.

    Rigorous for the weight's actual (floating-point) values, in exact arithmetic: it covers the
    rounding of the float64 computation that produces it. For a kernel it bounds the convolution on
    the infinite plane, hence with any zero padding and on every image size. See the module docstring
    for the derivation. For a matrix it equals the largest singular value up to float64 rounding; for
    a float32 orthogonal kernel it exceeds the norm by a few 1e-6 (the triangle inequality over the
    kernel offsets, applied to float32 rounding noise).

    Args:
        weight: (out, in) matrix or (out, in, k, k) cross-correlation kernel.
        stride: the convolution's stride (square).

    Returns:
        the bound, a Python float (``nan`` when the weight is not finite).

    Example:
        >>> matrix = torch.randn(5, 8)
        >>> norm = torch.linalg.matrix_norm(matrix.double(), ord=2).item()
        >>> norm <= operator_norm_bound(matrix) <= norm * (1 + 1e-12)
        True
        >>> operator_norm_bound(torch.ones(2, 3, 3, 3)) >= 9 * 6**0.5  # at frequency 0: 9 * ones(2, 3)
        True
    """
    kernel = _stride_one_kernel(weight, stride)
    if kernel.numel() == 0:
        return 0.0
    if not bool(torch.isfinite(kernel).all()):
        return math.nan
    squared = _squared_norm_bound(kernel)
    if not math.isfinite(squared):
        return math.nan
    # sqrt is correctly rounded: one more unit roundoff covers it
    return math.sqrt(max(squared, 0.0)) * (1 + 2 * _UNIT_ROUNDOFF)


def certify_weight(weight: Tensor, stride: int | tuple[int, int] = 1) -> Tensor:
    """``weight`` itself if :func:`operator_norm_bound` proves its norm <= 1, else a rescaled copy, proven too.

    The copy is ``c weight`` with ``c = (1 - slack) / b`` (``b`` the bound), rounded to the weight's
    dtype. It is verified without recomputing the bound: the rounding difference ``D`` is known
    exactly, and ``||conv(., c K + D)|| <= c b + sum_q ||D_q||_F`` (triangle inequality, on the
    stride-1 form); the slack grows until that is <= 1. The copy differs from the input by a relative
    ``b - 1 + slack``: about 1e-7 for a float32 orthogonal matrix, a few 1e-6 for a kernel. Runs
    without autograd.

    Args:
        weight: (out, in) matrix or (out, in, k, k) kernel.
        stride: the convolution's stride.

    Returns:
        a tensor of the same shape, dtype and device whose operator norm is provably <= 1.

    Raises:
        ValueError: if the weight has non-finite values.

    Example:
        >>> certified = certify_weight(torch.eye(4) * 1.001)
        >>> operator_norm_bound(certified) <= 1
        True
    """
    with torch.no_grad():
        bound = operator_norm_bound(weight, stride)
        if not math.isfinite(bound):
            raise ValueError(
                f"cannot certify a weight of shape {tuple(weight.shape)} with non-finite values (nan or inf)"
            )
        if bound <= 1.0:
            return weight
        exact = weight.detach().to(torch.float64)
        # rounding to nearest moves each entry by at most half an ulp: |D| <= u |c K|
        unit = torch.finfo(weight.dtype).eps / 2
        slack = unit * _tap_norm_sum(_stride_one_kernel(exact, stride)) / bound
        for _ in range(_MAX_ATTEMPTS):
            scale = (1.0 - slack) / bound
            target = exact * scale
            scaled = target.to(weight.dtype)
            difference = _stride_one_kernel(scaled.to(torch.float64) - target, stride)
            # the float64 products c K and the subtraction are exact to a unit roundoff each
            rounding = 2 * _UNIT_ROUNDOFF * scale * _tap_norm_sum(_stride_one_kernel(exact, stride))
            total = _round_up(scale * bound, 2) + _round_up(_tap_norm_sum(difference) + rounding, 2)
            if total <= 1.0:
                return scaled
            slack = 2 * (slack + total - 1.0)
        raise RuntimeError(f"could not certify a weight of shape {tuple(weight.shape)} (bound {bound})")
