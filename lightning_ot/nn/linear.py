"""Orthogonal (norm-preserving) linear layers and the Björck orthonormalization behind them."""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_ot.nn._cache import WeightCache
from lightning_ot.nn._function import Function
from lightning_ot.nn._transforms import is_transformed
from lightning_ot.nn.bounds import certify_weight

__all__ = ["BjorckOrthogonalization", "OrthogonalLinear", "bjorck_orthonormalize"]


def _add_product(input: Tensor, first: Tensor, second: Tensor, beta: float, alpha: float) -> Tensor:
    """``beta * input + alpha * first @ second`` in one fused call for (batches of) matrices."""
    if input.dim() == 2:
        return torch.addmm(input, first, second, beta=beta, alpha=alpha)
    if input.dim() == 3:
        return torch.baddbmm(input, first, second, beta=beta, alpha=alpha)
    return torch.add(beta * input, first @ second, alpha=alpha)


def _normalizing_scale(gram: Tensor) -> Tensor:
    """``1 / sqrt(b)`` for an upper bound ``b`` of the largest eigenvalue of each Gram matrix (no grad).

    ``b = ||G^16||_F^(1/16)``, which exceeds the largest eigenvalue by a factor ``m^(1/32)`` at most.
    It is computed as ``b = n_0 n_1^(1/4) n_2^(1/16)`` with ``n_0 = ||G||_F``, ``P_1 = (G / n_0)^4``,
    ``n_1 = ||P_1||_F``, ``n_2 = ||(P_1 / n_1)^4||_F``: the power is renormalized after every two
    squarings. Without that (``(G / ||G||_F)^16``), an orthonormal ``m x m`` weight gives entries
    ``m^-8`` whose squares underflow in float32 for ``m`` of about 700 and more: the norm became 0, the
    scale huge, the weight NaN. Here each power of a unit-norm positive semi-definite ``P`` by 4 has a
    norm of at least ``lambda_max(P)^4 >= 1 / m^2``, far above float32's underflow for any ``m``.
    (Only ``||G||_F`` itself needs the entries of ``G`` between about 1e-19 and 1e19 in float32.)
    """
    with torch.no_grad():
        tiny = torch.finfo(gram.dtype).tiny
        norm = gram.norm(dim=(-2, -1), keepdim=True).clamp_min(tiny)
        power = gram / norm
        bound = norm
        for exponent in (0.25, 0.0625):
            power = power @ power
            power = power @ power
            norm = power.norm(dim=(-2, -1), keepdim=True).clamp_min(tiny)
            power = power / norm
            bound = bound * norm.pow(exponent)
        # a zero matrix gets the largest finite scale, so it stays zero, not 0 * inf
        return bound.clamp_min(tiny).rsqrt()


#: Largest ratio ``lambda_max / e`` that :func:`_starting_scale` allows (so ``s_max <= 1.58 < sqrt 3``).
_MAX_START_RATIO = 2.5


def _quick_starting_scale(gram: Tensor) -> Tensor:
    """:func:`_starting_scale`'s ``1 / sqrt(e)``, from the Gram matrix alone where that is enough.

    ``e = ||G||_F^2 / tr(G)`` (the mean of the eigenvalues weighted by themselves) is a lower bound
    of ``lambda_max``, and the largest absolute row sum ``||G||_inf`` an upper bound; when the upper
    bound is within ``_MAX_START_RATIO`` of ``e``, ``e`` meets :func:`_starting_scale`'s guarantee
    without the matrix powers. That is the case for near-orthonormal matrices (retracted ones, or any
    after the first steps of training), for which this costs O(m^2) instead of two m x m x m products.
    Matrices of a batch for which it is not enough get :func:`_starting_scale`'s, so each gets the
    scale it would get alone. It reads numbers back and depends on the values, so only the
    retraction uses it (on a CPU): any scale leaves a retraction's polar factor unchanged, while the
    layers' forwards must compute the same function under every transform.
    """
    scale, enough = _scale_from_gram_alone(gram)
    if bool(enough.all()):
        return scale
    full = _starting_scale(gram)
    return torch.where(enough, scale, full) if bool(enough.any()) else full


def _scale_from_gram_alone(gram: Tensor) -> tuple[Tensor, Tensor]:
    """The ``1 / sqrt(e)`` of :func:`_quick_starting_scale`, and where it meets the guarantee (both
    of shape (*, 1, 1))."""
    tiny = torch.finfo(gram.dtype).tiny
    trace = gram.diagonal(dim1=-2, dim2=-1).sum(-1)[..., None, None]
    estimate = gram.square().sum(dim=(-2, -1), keepdim=True) / trace.clamp_min(tiny)
    upper = gram.abs().sum(dim=-1).amax(dim=-1)[..., None, None]
    enough = (trace > 0) & (upper <= _MAX_START_RATIO * estimate)
    return estimate.clamp_min(tiny).rsqrt(), enough


def _starting_scale(gram: Tensor) -> Tensor:
    """``1 / sqrt(e)`` for an estimate ``e <= lambda_max`` of each Gram matrix's largest eigenvalue (no grad).

    With ``P = G^4`` (two squarings, half the products of :func:`_normalizing_scale`'s bound) and
    ``S_8 = ||G^4||_F^(1/4)`` (which lies in ``[lambda_max, m^(1/8) lambda_max]``),
    ``e = max(tr(G P) / tr(P), S_8 m^(-1/8))``: both are lower bounds of ``lambda_max`` (a mean of the
    eigenvalues weighted by their 4th powers, and the Schatten bound divided by its largest excess),
    and ``e = 1`` exactly for an orthonormal matrix, which then needs a single step. Every scaled
    singular value is therefore at most ``m^(1/16)``; beyond ``m = 2.5^8`` (about 1500) two more
    squarings are spent (``P = G^16``, excess ``m^(1/32)``), so that the top singular value always starts
    at most ``sqrt(2.5) = 1.58 < sqrt 3``. One Björck step ``s -> 1.5 s - 0.5 s^3`` maps ``[0, sqrt 3]``
    into ``[0, 1]``: after any number >= 1 of steps the operator norm is <= 1, as with the upper
    bound, which starts the iteration up to ``m^(1/64)`` (1.1 for ``m = 512``) too low and costs about
    two more steps near orthogonality.
    """
    with torch.no_grad():
        size = gram.shape[-1]
        tiny = torch.finfo(gram.dtype).tiny
        norm = gram.norm(dim=(-2, -1), keepdim=True).clamp_min(tiny)
        power = gram / norm
        bound = norm
        rounds = (0.25,) if size ** (1 / 8) <= _MAX_START_RATIO else (0.25, 0.0625)
        for exponent in rounds:
            power = power @ power
            power = power @ power
            norm = power.norm(dim=(-2, -1), keepdim=True).clamp_min(tiny)
            power = power / norm
            bound = bound * norm.pow(exponent)
        excess = size ** (exponent / 2)
        trace = power.diagonal(dim1=-2, dim2=-1).sum(-1)[..., None, None]
        # tr(G P) = sum_ij G_ij P_ij for symmetric G and P
        weighted = (gram * power).sum(dim=(-2, -1), keepdim=True) / trace.clamp_min(tiny)
        estimate = torch.maximum(torch.where(trace > 0, weighted, 0.0), bound / excess)
        # a zero matrix gets the largest finite scale, so it stays zero, not 0 * inf
        return torch.minimum(estimate, bound).clamp_min(tiny).rsqrt()


@dataclass
class _BjorckTrace:
    """What the hand-written backward of :class:`_BjorckFunction` needs from the forward."""

    scale: Tensor | None = None
    initial: Tensor | None = None
    factor: Tensor | None = None
    # direct form: (X_k, G_k) per step; Gram form: (F_k or None, G_k, S_k) per step
    steps: list[tuple[Tensor | None, ...]] = field(default_factory=list)


def _bjorck_steps(
    matrix: Tensor,
    iterations: int,
    tolerance: float | None,
    trace: _BjorckTrace | None = None,
) -> Tensor:
    """Björck's iteration on a wide ``matrix`` (``m <= n``), after scaling its top singular value near 1.

    Differentiable (and traceable by ``torch.compile``) when autograd records it; ``trace`` collects
    what :class:`_BjorckFunction` needs to run the backward by hand.
    """
    gram = matrix @ matrix.mT
    # with at least one step, the estimate of the top singular value may start it a little above 1
    scale = _starting_scale(gram) if iterations > 0 else _normalizing_scale(gram)
    gram = gram * scale.square()
    matrix = matrix * scale
    if trace is not None:
        trace.scale, trace.initial = scale, matrix
    eye = torch.eye(gram.shape[-1], dtype=gram.dtype, device=gram.device)
    # near-square: X <- 1.5 X - 0.5 (X X^T) X costs two products a step, fewer than the three of the
    # Gram form below (X = F X_0, F <- S F, G <- S G S, S = 1.5 I - 0.5 G), which pays off for wide
    # matrices (n >= 1.5 m): only F X_0 and the first Gram matrix are m x m x n products
    direct = 2 * matrix.shape[-1] < 3 * matrix.shape[-2]
    factor: Tensor | None = None
    for step_index in range(iterations):
        last = step_index + 1 == iterations
        if tolerance is not None and not last:
            with torch.no_grad():
                deviation = float((gram - eye).norm(dim=(-2, -1)).max())
            # the first step always runs: it brings a top singular value started above 1 to <= 1
            if deviation <= 0.01 * tolerance and step_index > 0:
                break
            last = deviation <= tolerance
        if direct:
            if trace is not None:
                trace.steps.append((matrix, gram))
            matrix = _add_product(matrix, gram, matrix, beta=1.5, alpha=-0.5)
            if last:
                break
            gram = matrix @ matrix.mT
            continue
        step = torch.add(1.5 * eye, gram, alpha=-0.5)
        if trace is not None:
            trace.steps.append((factor, gram, step))
        factor = step if factor is None else step @ factor
        if last:
            break
        gram = step @ gram @ step
    if factor is not None:
        if trace is not None:
            trace.factor = factor
        matrix = factor @ matrix
    return matrix


class _BjorckFunction(Function):
    """Björck's iteration with a hand-written backward through its steps (the same gradient as autograd's).

    The forward runs without recording a graph and returns, besides the result, the few small
    matrices of each step as non-differentiable outputs (``torch.func`` wants what the backward needs
    returned, not stored by the forward); the backward walks the steps in reverse with fused
    products: ``dX = 1.5 D - 0.5 (G D + (D X^T + X D^T) X)`` per direct step, and the chain rule
    through ``F``, ``G`` and ``S`` in the Gram form. Autograd's own backward of the same steps makes
    about three times as many calls, which dominate the cost for the small matrices of a network's
    layers. A double backward (``create_graph=True``, and every ``torch.func`` transform) recomputes
    the steps with ``torch.func.vjp``; the forward-mode rule (``jvp``) pushes the tangent through the
    saved steps; ``torch.vmap`` runs the (already batched) iteration on the whole batch at once.
    """

    @staticmethod
    def forward(matrix: Tensor, iterations: int, tolerance: float | None) -> tuple[Tensor, ...]:
        trace = _BjorckTrace()
        result = _bjorck_steps(matrix, iterations, tolerance, trace)
        assert trace.scale is not None
        if trace.factor is None:  # direct form (X_0 is the initial matrix), or no step at all
            saved = [tensor for step in trace.steps for tensor in step]
        else:  # Gram form: X_0, F, (G_0, S_0), then (F_k, G_k, S_k)
            assert trace.initial is not None
            steps = (tensor for step in trace.steps for tensor in step if tensor is not None)
            saved = [trace.initial, trace.factor, *steps]
        return result, trace.scale, *saved

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Tensor, int, float | None], output: tuple[Tensor, ...]) -> None:
        matrix = inputs[0]
        _, *trace = output
        ctx.mark_non_differentiable(*trace)
        ctx.save_for_backward(matrix, *trace)
        ctx.save_for_forward(*trace)
        ctx.direct = 2 * matrix.shape[-1] < 3 * matrix.shape[-2]

    @staticmethod
    def _trace(ctx: Any, saved: tuple[Tensor, ...]) -> _BjorckTrace:
        scale, *rest = saved
        trace = _BjorckTrace(scale=scale)
        if not rest:
            return trace
        if ctx.direct:
            trace.steps = [(rest[index], rest[index + 1]) for index in range(0, len(rest), 2)]
            trace.initial = rest[0]
            return trace
        trace.initial, trace.factor, *rest = rest
        trace.steps = [(None, rest[0], rest[1])]
        trace.steps += [tuple(rest[index : index + 3]) for index in range(2, len(rest), 3)]
        return trace

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor, *_: Tensor | None) -> tuple[Tensor | None, None, None]:
        matrix, *saved = ctx.saved_tensors
        trace = _BjorckFunction._trace(ctx, tuple(saved))
        if torch.is_grad_enabled() or is_transformed(grad_output):
            iterations = len(trace.steps)
            _, pullback = torch.func.vjp(lambda weight: _bjorck_steps(weight, iterations, None), matrix)
            return pullback(grad_output)[0], None, None
        assert trace.scale is not None
        grad = grad_output.contiguous()
        if trace.steps and ctx.direct:
            for matrix, gram in reversed(trace.steps):
                outer = grad @ matrix.mT
                outer = outer + outer.mT
                grad = _add_product(
                    _add_product(grad, gram, grad, beta=1.5, alpha=-0.5), outer, matrix, 1.0, -0.5
                )
        elif trace.steps:  # Gram form: result = F X_0
            assert trace.factor is not None
            assert trace.initial is not None
            initial = trace.initial
            grad_factor = grad @ initial.mT
            grad = trace.factor.mT @ grad
            grad_gram: Tensor | None = None
            for factor, gram, step in reversed(trace.steps):
                if factor is None:
                    grad_step = grad_factor
                else:
                    grad_step = grad_factor @ factor.mT
                    grad_factor = step @ grad_factor
                if grad_gram is not None:
                    # G_{k+1} = S G S, with S and G commuting (S is a polynomial in G)
                    product = step @ gram
                    grad_step = grad_step + grad_gram @ product + product @ grad_gram
                    grad_gram = _add_product(grad_step, step @ grad_gram, step, beta=-0.5, alpha=1.0)
                else:
                    grad_gram = -0.5 * grad_step
            assert grad_gram is not None
            grad = _add_product(grad, grad_gram + grad_gram.mT, initial, beta=1.0, alpha=1.0)
        return grad * trace.scale, None, None

    @staticmethod
    def jvp(ctx: Any, matrix_tangent: Tensor, *_: None) -> tuple[Tensor | None, ...]:
        trace = _BjorckFunction._trace(ctx, ctx.saved_tensors)
        assert trace.scale is not None
        tangent = matrix_tangent * trace.scale
        if trace.steps and ctx.direct:  # X' = 1.5 X - 0.5 G X with G = X X^T
            for matrix, gram in trace.steps:
                outer = tangent @ matrix.mT
                outer = outer + outer.mT
                tangent = torch.add(1.5 * tangent, outer @ matrix + gram @ tangent, alpha=-0.5)
        elif trace.steps:  # result = F X_0, F <- S F, G <- S G S, S = 1.5 I - 0.5 G
            assert trace.factor is not None
            assert trace.initial is not None
            initial = trace.initial
            gram_tangent = tangent @ initial.mT
            gram_tangent = gram_tangent + gram_tangent.mT
            factor_tangent: Tensor | None = None
            for index, (factor, gram, step) in enumerate(trace.steps):
                step_tangent = -0.5 * gram_tangent
                if factor is None:
                    factor_tangent = step_tangent
                else:
                    assert factor_tangent is not None
                    factor_tangent = step_tangent @ factor + step @ factor_tangent
                if index + 1 < len(trace.steps):
                    product = step @ gram
                    gram_tangent = (
                        step_tangent @ product + step @ gram_tangent @ step + product @ step_tangent
                    )
            assert factor_tangent is not None
            tangent = factor_tangent @ initial + trace.factor @ tangent
        return tangent, *(None for _ in ctx.saved_tensors)

    @staticmethod
    def vmap(
        info: Any,
        in_dims: tuple[int | None, None, None],
        matrix: Tensor,
        iterations: int,
        tolerance: float | None,
    ) -> tuple[tuple[Tensor, ...], tuple[int, ...]]:
        # the iteration is batched over leading dimensions already (the tolerance is for all at once)
        outputs = _BjorckFunction.apply(matrix.movedim(in_dims[0], 0), iterations, tolerance)
        return outputs, tuple(0 for _ in outputs)


def bjorck_orthonormalize(weight: Tensor, iterations: int = 12, tolerance: float | None = 1e-3) -> Tensor:
    """Nearest (semi-)orthogonal matrix by Björck and Bowie's iteration (1971), batched.

    The matrix ``X`` (its wide orientation, ``m x n`` with ``m <= n``) is first divided by the square
    root of an estimate ``e`` of the largest eigenvalue of ``G = X X^T`` from below (``e = 1`` for an
    orthonormal matrix, ``e >= lambda_max / 2.5`` always; see :func:`_starting_scale`), so a
    well-conditioned matrix starts with its singular values close to 1 and no singular value above
    ``sqrt 2.5``. Each step ``X <- (1.5 I - 0.5 X X^T) X`` maps a singular value ``s`` to
    ``1.5 s - 0.5 s^3``, which lies in [0, 1] for every ``s`` in [0, sqrt 3]: after one step or more
    the result has operator norm <= 1 (certified in exact arithmetic), and is orthogonal in the limit
    (tight). With ``iterations=0`` the matrix is divided by an upper bound of its spectral norm
    instead, ``||G^16||_F^(1/32)``, which exceeds it by a factor ``m^(1/64)`` at most. The steps run
    on the small Gram matrix, so a wide matrix costs two ``m x m x n`` products.

    The iteration stops early, after at least one step: when ``||X X^T - I||_F <= tolerance / 100``,
    or one step after it is ``<= tolerance`` (that last step brings every singular value within
    ``1.5 (tolerance / 2)^2`` of 1); an orthonormal matrix takes one step. ``None`` always runs all
    ``iterations``, as do ``torch.compile`` and weights on an accelerator (the test reads a number
    back to the host: on a GPU that synchronization costs more than the few extra matrix products it
    would save).

    The normalizing scalar is treated as a constant by autograd: the polar factor does not depend on
    the scale of ``X``. With autograd recording, the backward through the steps actually run is
    written by hand (see :class:`_BjorckFunction`); it equals autograd's through the same steps.

    Args:
        weight: (*, out, in) matrix or batch of matrices.
        iterations: maximum number of Björck steps.
        tolerance: stop one step after the Gram matrix is this close to the identity (Frobenius),
            for every matrix of the batch (at once when 100 times closer, after the first step).

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
    compiling = torch.compiler.is_compiling()
    if tolerance is not None and (weight.device.type != "cpu" or compiling):
        tolerance = None
    recorded = torch.is_grad_enabled() and matrix.requires_grad
    # the Function also keeps the scale a constant for forward-mode AD, which no_grad does not stop
    tangent = torch.autograd.forward_ad.unpack_dual(matrix).tangent is not None
    if (recorded or tangent or is_transformed(matrix)) and not compiling:
        result = _BjorckFunction.apply(matrix, iterations, tolerance)[0]
    else:
        result = _bjorck_steps(matrix, iterations, tolerance)
    result = result if wide else result.mT
    return result.to(input_dtype)


class _TangentProjection(Function):
    """Identity forward; the backward projects the gradient onto the tangent space at the input of the
    manifold of matrices with orthonormal rows (wide) or columns (tall).

    For a wide ``W`` with ``W W^T = I`` that is ``G - 0.5 (G W^T + W G^T) W``: the derivative of the
    orthonormalization ``(W W^T)^(-1/2) W`` at ``W`` applied to ``G``, i.e. the gradient that
    Björck's iteration run to convergence would give. Shape: (*, out, in).
    """

    @staticmethod
    def forward(matrix: Tensor) -> Tensor:
        return matrix.view_as(matrix)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Tensor], output: Tensor) -> None:
        ctx.save_for_backward(inputs[0])

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> Tensor:
        return _project_on_tangent(ctx.saved_tensors[0], grad_output)


def _project_on_tangent(matrix: Tensor, grad: Tensor) -> Tensor:
    """``G - 0.5 (G W^T + W G^T) W`` for a wide ``W``, ``G - 0.5 W (W^T G + G^T W)`` for a tall one."""
    wide = matrix.shape[-2] <= matrix.shape[-1]
    weight, grad = (matrix, grad) if wide else (matrix.mT, grad.mT)
    outer = grad @ weight.mT
    projected = _add_product(grad, outer + outer.mT, weight, beta=1.0, alpha=-0.5)
    return projected if wide else projected.mT


class _TangentLinear(Function):
    """``F.linear(input, weight, bias)`` whose weight gradient is projected as :class:`_TangentProjection`
    projects it, computed from the batch instead of from ``G = delta^T x``.

    With ``y = x W^T`` and ``u = delta W`` (the input gradient), the projection of ``delta^T x`` is
    ``delta^T (x - 0.5 y W) - 0.5 y^T u`` for a wide ``W`` and ``(delta - 0.5 u W^T)^T x - 0.5 y^T u``
    for a tall one: products with the batch of ``B`` rows (``4 B m n`` multiply-adds in the backward,
    ``u`` included), against ``B m n + 2 min(m, n)^2 max(m, n)`` through ``G``, so it is the cheaper
    one for ``B < min(m, n)``. The second output, ``y``, is what the backward needs (no gradient).
    Shapes: input (B, in), weight (out, in), bias (out,) or None; outputs (B, out) and (B, out).
    """

    @staticmethod
    def forward(rows: Tensor, weight: Tensor, bias: Tensor | None) -> tuple[Tensor, Tensor]:
        product = rows @ weight.mT
        # two separate tensors, neither a view: the caller may modify the output in place
        return (product.clone() if bias is None else product + bias), product

    @staticmethod
    def setup_context(
        ctx: Any, inputs: tuple[Tensor, Tensor, Tensor | None], output: tuple[Tensor, Tensor]
    ) -> None:
        rows, weight, bias = inputs
        ctx.mark_non_differentiable(output[1])
        ctx.save_for_backward(rows, weight, output[1])
        ctx.has_bias = bias is not None

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor, _: Tensor | None) -> tuple[Tensor | None, ...]:
        rows, weight, product = ctx.saved_tensors
        delta = grad_output  # (B, out)
        grad_bias = delta.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        if torch.is_grad_enabled():
            # double backward: the graph of F.linear through _TangentProjection, whose derivatives
            # are projected in every use of the weight
            grad_rows = delta @ _TangentProjection.apply(weight)
            grad_weight = _project_on_tangent(weight, delta.mT @ rows)
            return grad_rows if ctx.needs_input_grad[0] else None, grad_weight, grad_bias
        grad_rows = delta @ weight
        if weight.shape[-2] <= weight.shape[-1]:
            grad_weight = delta.mT @ torch.add(rows, product @ weight, alpha=-0.5)
        else:
            grad_weight = torch.add(delta, grad_rows @ weight.mT, alpha=-0.5).mT @ rows
        grad_weight = torch.addmm(grad_weight, product.mT, grad_rows, alpha=-0.5)
        return grad_rows if ctx.needs_input_grad[0] else None, grad_weight, grad_bias


#: Largest root mean square of ``lambda - 1`` over a retracted matrix's Gram eigenvalues for which
#: training forwards use the matrix as it is (about 1 % on its singular values).
MAX_RETRACTED_DEVIATION = 0.02


class _RetractionMarks:
    """Which parameters hold exactly the values a retraction wrote.

    Such a matrix has its singular values in [0, 1] (one Björck step from a start below sqrt 3, see
    :func:`bjorck_orthonormalize`) and close to 1, so a training forward may use it as it is. A
    parameter is fresh while its version counter is the one the retraction left, or, after an
    in-place write of the same values (DDP's broadcast of rank 0's parameters, a reload), while it
    equals the copy kept of them (one copy of each marked matrix: memory of the size of those
    parameters). Copies and pickles of the layer start empty.
    """

    def __init__(self) -> None:
        self._marks: dict[int, tuple[weakref.ref[Tensor], int, Tensor]] = {}

    def mark(self, parameter: Tensor, deviation_bound: float | None = None) -> None:
        """Mark ``parameter`` fresh if it is near orthonormal: the root mean square of ``lambda - 1``
        over the eigenvalues of its Gram matrix at most ``MAX_RETRACTED_DEVIATION`` (early in
        training one retraction step can leave singular values far below 1: Björck's iteration then
        still runs in the forward). A ``deviation_bound`` (an upper bound of that root mean square,
        as the retraction returns it) within the limit spares computing the Gram matrix."""
        matrix = parameter.detach()
        if deviation_bound is not None and deviation_bound <= MAX_RETRACTED_DEVIATION:
            deviation = deviation_bound
        else:
            wide = matrix if matrix.shape[-2] <= matrix.shape[-1] else matrix.mT
            gram = wide @ wide.mT
            eye = torch.eye(gram.shape[-1], dtype=gram.dtype, device=gram.device)
            deviation = float(((gram - eye).square().sum(dim=(-2, -1)) / gram.shape[-1]).sqrt().max())
        if deviation <= MAX_RETRACTED_DEVIATION:
            entry = self._marks.get(id(parameter))
            if entry is not None and entry[0]() is parameter and _same_layout(entry[2], matrix):
                values = entry[2].copy_(matrix)  # the previous copy's memory, not a new allocation
            else:
                values = matrix.clone()
            self._marks[id(parameter)] = (weakref.ref(parameter), parameter._version, values)
        else:
            self._marks.pop(id(parameter), None)

    def fresh(self, parameter: Tensor) -> bool:
        entry = self._marks.get(id(parameter))
        if entry is None or entry[0]() is not parameter:
            return False
        if entry[1] == parameter._version:
            return True
        values = entry[2]
        same = _same_layout(values, parameter) and torch.equal(values, parameter.detach())
        if same:
            self._marks[id(parameter)] = (entry[0], parameter._version, values)
        else:
            del self._marks[id(parameter)]
        return same

    def save(self, parameters: list[Tensor], destination: dict[str, Any], prefix: str) -> None:
        """Add ``RETRACTED_KEY`` to a state dict when every one of ``parameters`` is fresh."""
        if parameters and all(self.fresh(parameter) for parameter in parameters):
            destination[prefix + RETRACTED_KEY] = torch.tensor(True)

    def load(self, parameters: list[Tensor], flag: Tensor | None) -> None:
        """Mark ``parameters`` fresh after ``load_state_dict`` when the state dict said they were."""
        if flag is not None and bool(flag):
            for parameter in parameters:
                self.mark(parameter)  # checks again that it is near orthonormal

    def __deepcopy__(self, memo: dict) -> _RetractionMarks:
        return _RetractionMarks()

    def __getstate__(self) -> dict:
        return {}

    def __setstate__(self, state: dict) -> None:
        self._marks = {}


def _same_layout(first: Tensor, second: Tensor) -> bool:
    return first.shape == second.shape and first.dtype == second.dtype and first.device == second.device


class _RetractedState:
    """Mixin for layers with :class:`_RetractionMarks` (``self._retracted``): state dicts say, under
    ``RETRACTED_KEY``, whether the matrices of :meth:`_retractable_matrices` are what a retraction
    wrote, and loading such a state dict marks them again (a resumed fit then trains as the
    uninterrupted one)."""

    _retracted: _RetractionMarks

    def _retractable_matrices(self) -> list[Tensor]:
        raise NotImplementedError

    def _retraction_plan(self) -> list[_PlannedRetraction]:
        """What :meth:`retract_` does, for :func:`_retract_planned` (which batches plans together)."""
        raise NotImplementedError

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        retracted = state_dict.pop(prefix + RETRACTED_KEY, None)
        super()._load_from_state_dict(state_dict, prefix, *args)  # type: ignore[misc]
        self._retracted.load(self._retractable_matrices(), retracted)

    def _save_to_state_dict(self, destination: dict[str, Any], prefix: str, keep_vars: bool) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)  # type: ignore[misc]
        self._retracted.save(self._retractable_matrices(), destination, prefix)


def _used_as_it_is(parameter: Tensor, marks: _RetractionMarks) -> bool:
    """Whether a training forward uses ``parameter`` as it is: it holds what a retraction wrote, and
    autograd (backward mode only, no transform, no compilation) records it."""
    return (
        not torch.compiler.is_compiling()  # first: the other tests read Python state dynamo would trace
        and torch.is_grad_enabled()
        and parameter.requires_grad
        and not is_transformed(parameter)
        and torch.autograd.forward_ad.unpack_dual(parameter).tangent is None
        and marks.fresh(parameter)
    )


def _training_orthonormalization(parameter: Tensor, iterations: int, marks: _RetractionMarks) -> Tensor:
    """:func:`bjorck_orthonormalize` of ``parameter``, or, while it holds what a retraction wrote and
    autograd records it, the parameter itself with its gradient projected on the tangent space (no
    Björck step forward or backward: the retraction after the optimizer step does the work)."""
    if _used_as_it_is(parameter, marks):
        return _TangentProjection.apply(parameter)
    return bjorck_orthonormalize(parameter, iterations)


def _retracted_deviation_bounds(deviation: Tensor) -> Tensor:
    """Upper bounds of the root mean square of ``lambda - 1`` over the Gram eigenvalues after one
    Björck step, from ``D = G - I`` for the (scaled) Gram matrices ``G`` before it: one per matrix,
    shape ``D.shape[:-2]``.

    A step maps each eigenvalue ``1 + d`` of ``G`` to ``(1 + d)(1 - d / 2)^2 = 1 - d^2 (3 - d) / 4``,
    so with ``a >= max |d|`` (``a = min(||D||_F, ||D||_inf)``), the deviation after the step has a
    Frobenius norm of at most ``a (3 + a) / 4 ||D||_F``: O(m^2), no product.
    """
    frobenius = deviation.norm(dim=(-2, -1))
    size = deviation.shape[-1] ** 0.5
    bounds = frobenius.square() * (3 + frobenius) / (4 * size)
    if float(bounds.max()) <= MAX_RETRACTED_DEVIATION:  # near orthonormal: the Frobenius norm shows it
        return bounds
    largest = torch.minimum(frobenius, deviation.abs().sum(dim=-1).amax(dim=-1))
    return frobenius * largest * (3 + largest) / (4 * size)


#: Rows from which :func:`_gram` multiplies blocks (below, :func:`_retract_planned` batches matrices).
_BLOCKED_GRAM_ROWS = 256


def _gram(matrix: Tensor) -> Tensor:
    """``matrix @ matrix.mT``: (m, n) -> (m, m). From 256 rows on a CPU, only the 10 blocks of a 4 x 4
    tiling on and above the diagonal are multiplied and the others copied from them (the result is
    symmetric): 0.7-0.8x the time of the full product for 512 x 784 on one thread."""
    rows = matrix.shape[-2]
    if matrix.dim() != 2 or rows < _BLOCKED_GRAM_ROWS or matrix.device.type != "cpu":
        return matrix @ matrix.mT
    gram = matrix.new_empty(rows, rows)
    size = -(-rows // 4)
    for start in range(0, rows, size):
        torch.mm(matrix[start : start + size], matrix[start:].mT, out=gram[start : start + size, start:])
    for start in range(size, rows, size):
        gram[start : start + size, :start] = gram[:start, start : start + size].mT
    return gram


@torch.no_grad()
def _retracted(matrices: Tensor, steps: int) -> tuple[Tensor, Tensor]:
    """``steps`` Björck steps of each (*, m, n) matrix, after the starting scale of
    :func:`bjorck_orthonormalize` (from the Gram matrix alone on a CPU where that is enough), and
    :func:`_retracted_deviation_bounds` of each result (shape ``*``)."""
    if steps < 1:
        raise ValueError(f"`steps` must be >= 1, got {steps}")
    weight = matrices.float() if matrices.dtype in (torch.float16, torch.bfloat16) else matrices
    wide = weight.shape[-2] <= weight.shape[-1]
    matrix = weight if wide else weight.mT
    quick_start = matrix.device.type == "cpu" and not torch.compiler.is_compiling()
    scale: Tensor | float = 1.0
    bounds = torch.zeros(())
    for step_index in range(steps):
        gram = _gram(matrix)
        if step_index == 0:
            scale = _quick_starting_scale(gram) if quick_start else _starting_scale(gram)
            gram.mul_(scale.square())
        # with D = s^2 G - I, the step s X -> 1.5 s X - 0.5 s^3 (X X^T) X is (s I - 0.5 s D) X
        deviation = gram
        deviation.diagonal(dim1=-2, dim2=-1).sub_(1.0)
        if step_index + 1 == steps:
            bounds = _retracted_deviation_bounds(deviation)
        factor = deviation.mul_(-0.5 * scale)
        factor.diagonal(dim1=-2, dim2=-1).add_(scale[..., 0] if isinstance(scale, Tensor) else scale)
        matrix = factor @ matrix
        scale = 1.0
    return (matrix if wide else matrix.mT), bounds


def _retract(parameter: Tensor, steps: int) -> float:
    """:func:`retract_matrix_`, returning the largest of :func:`_retracted_deviation_bounds` of the result."""
    result, bounds = _retracted(parameter, steps)
    with torch.no_grad():
        parameter.copy_(result)
    return float(bounds.max())


@dataclass
class _PlannedRetraction:
    """A matrix to retract, and the marks to mark it in afterwards (None: left unmarked)."""

    matrix: Tensor
    marks: _RetractionMarks | None


def _retract_planned(plans: Sequence[_PlannedRetraction], steps: int) -> None:
    """Retract every planned matrix, the small ones of the same shape, dtype and device together
    (:func:`_retract_together`), and mark each in its marks."""
    groups: dict[object, list[_PlannedRetraction]] = {}
    for plan in plans:
        # a large matrix's arithmetic outweighs its dispatch, and alone it gets the blocked Gram product
        small = min(plan.matrix.shape[-2:]) < _BLOCKED_GRAM_ROWS
        key = (plan.matrix.shape, plan.matrix.dtype, plan.matrix.device) if small else id(plan)
        groups.setdefault(key, []).append(plan)
    for members in groups.values():
        bounds = _retract_together([plan.matrix for plan in members], steps)
        for plan, bound in zip(members, bounds, strict=True):
            if plan.marks is not None:
                plan.marks.mark(plan.matrix, bound)


def _retract_together(parameters: Sequence[Tensor], steps: int) -> list[float]:
    """:func:`_retract` of each of ``parameters`` (same shape, dtype and device) in one batched pass.

    Small matrices cost their operations' dispatch more than their arithmetic: the quickstart MLP's
    matrices retract in 0.45x the time together (``benchmarks/fixed_costs.py``). Returns each one's
    bound.
    """
    if len(parameters) == 1:
        return [_retract(parameters[0], steps)]
    with torch.no_grad():
        results, bounds = _retracted(torch.stack([parameter.detach() for parameter in parameters]), steps)
        for parameter, result in zip(parameters, results.unbind(0), strict=True):
            parameter.copy_(result)
    return bounds.reshape(len(parameters), -1).amax(dim=1).tolist()


@torch.no_grad()
def retract_matrix_(parameter: Tensor, steps: int = 1) -> Tensor:
    """Replace ``parameter`` in place by ``steps`` Björck steps of itself; return it.

    A Björck step maps each singular value ``s`` to ``1.5 s - 0.5 s^3`` and keeps the singular
    vectors, so the orthonormalization of the result (its polar factor) is that of ``parameter``: the
    layer built from it computes the same function (to float32 rounding), while the raw matrix moves
    toward its orthonormal limit. Every singular value ends in [0, 1]. On a CPU a near-orthonormal
    matrix is scaled from its Gram matrix alone (:func:`_quick_starting_scale`). Shape: (*, out, in),
    unchanged.
    """
    _retract(parameter, steps)
    return parameter


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


#: State-dict key (under the layer's prefix) saying that the raw matrices are what a retraction wrote,
#: present only then, so that a resumed fit trains on them as the uninterrupted one does.
RETRACTED_KEY = "retracted"

#: State-dict key (under the layer's prefix) of the raw weight in versions that parametrized it with
#: ``torch.nn.utils.parametrize``; :class:`OrthogonalLinear` loads it as ``weight_orig``.
_PARAMETRIZED_WEIGHT_KEY = "parametrizations.weight.original"


class OrthogonalLinear(_RetractedState, nn.Linear):
    """``nn.Linear`` whose weight is kept (semi-)orthogonal: 1-Lipschitz and norm-preserving.

    The trainable parameter is an unconstrained matrix ``weight_orig`` (out_features, in_features)
    (the name follows ``torch.nn.utils.spectral_norm``); ``weight`` is a property computed from it by
    :func:`bjorck_orthonormalize`, whose operator norm is <= 1 in exact arithmetic. In training mode
    with gradients on, ``weight`` is recomputed (differentiable) at every access. In eval mode or
    without autograd it is computed once, cached until ``weight_orig`` changes, and certified by
    :func:`~lightning_ot.nn.bounds.certify_weight`: its operator norm is provably <= 1 for its actual
    floating-point values (a relative rescale by 1e-7 to 2e-5 in float32, measured by
    ``benchmarks/certified_norms.py``; see :mod:`lightning_ot.nn.bounds`).
    That eval weight is the one that certificates, explanations and :func:`vanilla_export` use.

    A plain module (no ``torch.nn.utils.parametrize``): it pickles, deep-copies and spawns.
    State dicts and checkpoints written with the parametrized layout of earlier versions (key
    ``parametrizations.weight.original``) load into ``weight_orig``.

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
        # nn.Linear.__init__ would register a `weight` parameter, which is a property here
        nn.Module.__init__(self)
        if in_features < 1 or out_features < 1:
            raise ValueError(
                f"`in_features` and `out_features` must be positive, got {in_features} and {out_features}"
            )
        if iterations < 0:
            raise ValueError(f"`iterations` must be >= 0, got {iterations}")
        factory = {"device": device, "dtype": dtype}
        self.in_features = in_features
        self.out_features = out_features
        self.iterations = iterations
        # the bias first: the parameter order of the parametrized layer (bias, then the raw weight),
        # so that optimizer states saved by earlier versions resume onto the right parameters
        if bias:
            self.bias = nn.Parameter(torch.empty(out_features, **factory))
        else:
            self.register_parameter("bias", None)
        self.weight_orig = nn.Parameter(torch.empty(out_features, in_features, **factory))
        self._cache = WeightCache()
        self._retracted = _RetractionMarks()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.orthogonal_(self.weight_orig)
        if self.bias is not None:
            nn.init.zeros_(self.bias)
        self._cache.clear()

    def compute_weight(self) -> Tensor:
        """(out_features, in_features) Björck orthonormalization of ``weight_orig``, differentiable
        (``weight_orig`` itself, gradient projected, right after :meth:`retract_`)."""
        return _training_orthonormalization(self.weight_orig, self.iterations, self._retracted)

    def retract_(self, steps: int = 1) -> None:
        """Move ``weight_orig`` toward orthonormal without changing ``weight`` (see :func:`retract_weights_`).

        If it is then near orthonormal (see :mod:`lightning_ot.nn.retraction`), training forwards
        use it as it is until it changes again (the next optimizer step): its singular values are
        in [0, 1], and its gradient is projected on the tangent space of the orthonormal matrices
        at it, which is the gradient of the orthonormalization there. No Björck step runs in the
        forward or the backward, and for a batch of fewer rows than ``min(in_features,
        out_features)`` the projection is computed from the batch, not from the whole gradient.
        """
        _retract_planned(self._retraction_plan(), steps)

    def _retraction_plan(self) -> list[_PlannedRetraction]:
        return [_PlannedRetraction(self.weight_orig, self._retracted)]

    @property
    def weight(self) -> Tensor:  # type: ignore[override]
        """The (semi-)orthogonal weight; cached and certified in eval mode (or without autograd)."""
        return self._cache.get(self, (self.weight_orig,), self.compute_weight, certify_weight)

    def forward(self, input: Tensor) -> Tensor:
        if self._tangent_from_batch(input):
            self._cache.clear()
            rows = input.reshape(-1, self.in_features)
            output = _TangentLinear.apply(rows, self.weight_orig, self.bias)[0]
            return output.view(*input.shape[:-1], self.out_features)
        return F.linear(input, self.weight, self.bias)

    def _tangent_from_batch(self, input: Tensor) -> bool:
        """Whether a training forward with the retracted matrix as it is computes its projected
        gradient from the batch (:class:`_TangentLinear`): cheaper than from the gradient when the
        batch has fewer rows than ``min(in_features, out_features)``."""
        return (
            not torch.compiler.is_compiling()  # first, as in _used_as_it_is
            and input.numel() < self.in_features * min(self.in_features, self.out_features)
            # a subclass that computes its weight otherwise gets it through `weight`
            and type(self).compute_weight is OrthogonalLinear.compute_weight
            and type(self).weight is OrthogonalLinear.weight
            and WeightCache.recomputes(self, (self.weight_orig,))
            and input.dtype == self.weight_orig.dtype
            and not torch.is_autocast_enabled(input.device.type)
            and not is_transformed(input)
            and torch.autograd.forward_ad.unpack_dual(input).tangent is None
            and _used_as_it_is(self.weight_orig, self._retracted)
        )

    @property
    def lipschitz_bound(self) -> float:
        return 1.0

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        old_key = prefix + _PARAMETRIZED_WEIGHT_KEY
        if old_key in state_dict and prefix + "weight_orig" not in state_dict:
            state_dict[prefix + "weight_orig"] = state_dict.pop(old_key)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        self._cache.clear()

    def _retractable_matrices(self) -> list[Tensor]:
        return [self.weight_orig]

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, iterations={self.iterations}"
