"""Counterfactual explanations by optimal transport: walk each input along its gradient to the
decision boundary and past it (Serrurier et al., NeurIPS 2023)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from lightning_ot.explain._common import (
    Model,
    check_input,
    check_target,
    explanation_mode,
    input_gradient,
    is_binary,
)

__all__ = ["CounterfactualResult", "counterfactual"]

CounterfactualMode = Literal["boundary", "nearest", "steps"]


@dataclass(frozen=True)
class CounterfactualResult:
    """The transported inputs and what happened to them (``T`` transports per input).

    Attributes:
        images: (B, T, ...) transported inputs (after clamping, if asked).
        step_sizes: (B, T) distance ``t`` walked along the initial unit direction; in ``"boundary"``
            and ``"nearest"`` modes, the first-order distance to the boundary ``g(x) / ||grad g(x)||``.
        distances: (B, T) ``||x' - x||_2``, the distance actually moved.
        margin_before: (B,) ``g(x) = f_source(x) - f_target(x)`` (binary: ``f`` for source class 1,
            ``-f`` for source class 0): positive on the source side of the boundary.
        margin_after: (B, T) ``g(x')``.
        flipped: (B, T) whether the predicted class of ``x'`` differs from ``source``.
        on_boundary: (B, T) whether ``|g(x')| <= tolerance``.
        clamped: (B, T) whether clamping to the data range changed the transport.
        source: (B,) class transported from.
        target: (B,) class transported to.
        gradient_norm: (B,) ``||grad g(x)||`` (``sqrt(2)`` at most for a 1-Lipschitz multiclass
            network, 1 for an hKR-optimal binary one).
    """

    images: Tensor
    step_sizes: Tensor
    distances: Tensor
    margin_before: Tensor
    margin_after: Tensor
    flipped: Tensor
    on_boundary: Tensor
    clamped: Tensor
    source: Tensor
    target: Tensor
    gradient_norm: Tensor

    @property
    def stopped_by_clamping(self) -> Tensor:
        """(B, T) transports that clamping kept from reaching the boundary or flipping the class."""
        return self.clamped & ~self.flipped & ~self.on_boundary


class _PairMargin:
    """``g = f_source - f_target`` (binary: ``+-f``) as a function of the logits."""

    def __init__(self, source: Tensor, target: Tensor, binary: bool) -> None:
        self.source, self.target, self.binary = source, target, binary

    def __call__(self, logits: Tensor) -> Tensor:
        if self.binary:
            scores = logits.reshape(-1)
            return torch.where(self.source == 1, scores, -scores)
        return logits.gather(1, self.source[:, None]).squeeze(1) - logits.gather(
            1, self.target[:, None]
        ).squeeze(1)


def _predict(logits: Tensor) -> Tensor:
    """(B,) predicted classes: ``f > 0`` for binary logits, the argmax otherwise."""
    return (logits.reshape(-1) > 0).long() if is_binary(logits) else logits.argmax(dim=1)


def counterfactual(
    model: Model,
    x: Tensor,
    target: Tensor | int | None = None,
    *,
    source: Tensor | int | None = None,
    mode: CounterfactualMode = "boundary",
    step_sizes: Sequence[float] = (0.5, 1.0, 1.5, 2.0),
    relative: bool = True,
    tolerance: float = 1e-3,
    max_iterations: int = 10,
    clamp: tuple[float, float] | None = None,
    refinements: int = 20,
) -> CounterfactualResult:
    """Transport each input from its ``source`` class toward ``target`` along the gradient.

    With ``g = f_source - f_target`` (binary: ``g = f`` for source class 1, ``-f`` for class 0) and
    ``d = grad g(x) / ||grad g(x)||``, the transport is ``x - t d``: for an hKR-optimal network
    (``||grad f|| = 1``) this is the paper's ``x - t grad f(x)``, the boundary lies at ``t = g(x)``
    and larger ``t`` crosses into the target class.

    Modes:

    - ``"boundary"``: land on ``g = 0`` to ``tolerance`` with Newton steps
      ``x <- x - g(x) grad g(x) / ||grad g(x)||^2`` (one step is exact for an affine ``g``), at most
      ``max_iterations`` of them. ``T = 1``. This follows the gradient, which bends: the point found
      is on the boundary, not necessarily the nearest one.
    - ``"nearest"``: the nearest boundary point found, the minimal counterfactual. From the
      ``"boundary"`` point ``z``, each of ``refinements`` rounds moves ``z`` halfway toward the
      projection of ``x`` on the boundary's linearization at ``z``, ``{u : g(z) + grad g(z) . (u - z)
      = 0}``, and lands back on the boundary with Newton steps; the closest boundary point seen is
      kept (a fixed point satisfies the first-order condition of ``min ||u - x||`` subject to
      ``g(u) = 0``: ``x - u`` is parallel to ``grad g(u)``). Its distance is an upper bound of the
      distance to the boundary, which the certified radius bounds from below. ``T = 1``.
    - ``"steps"``: the straight line ``x - t d`` for each ``t`` in ``step_sizes``, as multiples of the
      first-order boundary distance ``g(x) / ||grad g(x)||`` when ``relative`` (1.0 = the boundary,
      2.0 = as far past it as ``x`` is before it), in input units otherwise. ``T = len(step_sizes)``.

    Args:
        model: maps (B, ...) inputs to (B, 1) binary or (B, C) logits; put it in eval mode.
        x: (B, ...) inputs.
        target: (B,) class indices or one int to transport to; None: the other class (binary), the
            runner-up class (multiclass: the nearest boundary to first order for a network whose
            logit differences have equal gradient norms).
        source: (B,) class indices or one int to transport from; None: the predicted class (binary
            with a ``target``: the other class).
        mode: ``"boundary"``, ``"nearest"`` or ``"steps"``.
        step_sizes: the ``t`` of ``"steps"`` mode (>= 0).
        relative: whether ``step_sizes`` are multiples of the boundary distance.
        tolerance: ``|g|`` below which a point is on the boundary.
        max_iterations: Newton steps at most in ``"boundary"`` mode (and per landing in ``"nearest"``).
        clamp: ``(low, high)`` data range to clamp every transported input to, e.g. ``(0.0, 1.0)``.
        refinements: rounds of ``"nearest"`` mode at most (it stops earlier when no point moves closer).

    Returns:
        A :class:`CounterfactualResult`.

    Example:
        >>> model = torch.nn.Linear(2, 1)
        >>> with torch.no_grad():
        ...     _ = model.weight.copy_(torch.tensor([[0.6, 0.8]])), model.bias.zero_()
        >>> result = counterfactual(model, torch.tensor([[1.0, 1.0]]))
        >>> result.images[:, 0], result.margin_before, result.on_boundary
        (tensor([[ 0.1600, -0.1200]]), tensor([1.4000]), tensor([[True]]))
        >>> counterfactual(model, torch.tensor([[1.0, 1.0]]), mode="steps", step_sizes=[2.0]).flipped
        tensor([[True]])
        >>> bent = torch.nn.Sequential(torch.nn.ReLU(), torch.nn.Linear(2, 1))  # relu(u) + relu(v) - 1
        >>> with torch.no_grad():
        ...     _ = bent[1].weight.fill_(1.0), bent[1].bias.fill_(-1.0)
        >>> x = torch.tensor([[3.0, 0.2]])  # nearest boundary point: (1, 0), at distance 2.01
        >>> counterfactual(bent, x).images[:, 0], counterfactual(bent, x).distances
        (tensor([[ 1.0000, -0.9000]]), tensor([[2.2825]]))
        >>> counterfactual(bent, x, mode="nearest").distances
        tensor([[2.0100]])
    """
    check_input(x)
    _check_transport_options(mode, step_sizes, tolerance, max_iterations, clamp, refinements)
    batch_size = x.shape[0]
    x = x.detach()
    with explanation_mode(model, x):
        with torch.no_grad():
            logits = model(x.clone())
        binary = is_binary(logits)
        source_t, target_t = _resolve_classes(logits, binary, source, target, batch_size, x.device)
        margin = _PairMargin(source_t, target_t, binary)
        margin_before, gradient, _ = input_gradient(model, x, margin)
        first = (model, x, margin, margin_before, gradient)
        return _transport(*first, mode, step_sizes, relative, tolerance, max_iterations, clamp, refinements)


def _check_transport_options(
    mode: str,
    step_sizes: Sequence[float],
    tolerance: float,
    max_iterations: int,
    clamp: tuple[float, float] | None,
    refinements: int = 0,
) -> None:
    """Raise a ``ValueError`` naming the first bad argument of :func:`counterfactual`."""
    if mode not in ("boundary", "nearest", "steps"):
        raise ValueError(f"`mode` must be 'boundary', 'nearest' or 'steps', got {mode!r}")
    if isinstance(refinements, bool) or not isinstance(refinements, int) or refinements < 0:
        raise ValueError(f"`refinements` must be an int >= 0, got {refinements!r}")
    if mode == "steps" and (len(step_sizes) == 0 or any(t < 0 for t in step_sizes)):
        raise ValueError(f"`step_sizes` must be a non-empty list of numbers >= 0, got {list(step_sizes)}")
    if tolerance <= 0:
        raise ValueError(f"`tolerance` must be > 0, got {tolerance}")
    if max_iterations < 1:
        raise ValueError(f"`max_iterations` must be >= 1, got {max_iterations}")
    if clamp is not None and not (len(clamp) == 2 and clamp[0] < clamp[1]):
        raise ValueError(f"`clamp` must be (low, high) with low < high, got {clamp}")


def _transport(
    model,
    x,
    margin,
    margin_before,
    gradient,
    mode,
    step_sizes,
    relative,
    tolerance,
    max_iterations,
    clamp,
    refinements=0,
) -> CounterfactualResult:
    """The transports of :func:`counterfactual` (same options) from ``margin_before = g(x)`` and
    ``gradient = grad g(x)`` already computed, so that one backward pass serves saliency and
    transports; ``margin`` is the :class:`_PairMargin` ``g``. Call it inside :func:`explanation_mode`."""
    batch_size = x.shape[0]
    gradient_norm = _flat_norm(gradient)
    safe_norm = gradient_norm.clamp_min(torch.finfo(x.dtype).tiny)
    boundary_distance = margin_before / safe_norm
    if mode in ("boundary", "nearest"):
        images, clamped = _newton_to_boundary(
            model, x, margin, margin_before, gradient, tolerance, max_iterations, clamp
        )
        if mode == "nearest":
            images, clamped = _nearest_on_boundary(
                model, x, margin, images, clamped, tolerance, max_iterations, clamp, refinements
            )
        images, clamped = images[:, None], clamped[:, None]
        steps = boundary_distance[:, None]
    else:
        requested = torch.as_tensor(list(step_sizes), dtype=x.dtype, device=x.device)
        steps = (
            requested[None, :] * boundary_distance[:, None] if relative else requested.expand(batch_size, -1)
        )
        direction = (gradient / _expand(safe_norm, gradient)).unsqueeze(1)
        images = x.unsqueeze(1) - _expand(steps, direction) * direction
        clamped = torch.zeros_like(steps, dtype=torch.bool)
        if clamp is not None:
            unclamped = images
            images = images.clamp(*clamp)
            clamped = (images != unclamped).flatten(2).any(dim=2)

    with torch.no_grad():
        after_logits = model(images.flatten(0, 1))
    count = images.shape[1]
    repeated = _PairMargin(
        margin.source.repeat_interleave(count), margin.target.repeat_interleave(count), margin.binary
    )
    margin_after = repeated(after_logits).view(batch_size, count)
    flipped = _predict(after_logits).view(batch_size, count) != margin.source[:, None]
    return CounterfactualResult(
        images=images,
        step_sizes=steps,
        distances=(images - x.unsqueeze(1)).flatten(2).norm(dim=2),
        margin_before=margin_before,
        margin_after=margin_after,
        flipped=flipped,
        on_boundary=margin_after.abs() <= tolerance,
        clamped=clamped,
        source=margin.source,
        target=margin.target,
        gradient_norm=gradient_norm,
    )


def _resolve_classes(
    logits: Tensor,
    binary: bool,
    source: Tensor | int | None,
    target: Tensor | int | None,
    batch_size: int,
    device: torch.device,
) -> tuple[Tensor, Tensor]:
    source_t = check_target(source, batch_size, device)
    target_t = check_target(target, batch_size, device)
    if binary:
        for name, value in (("source", source_t), ("target", target_t)):
            if value is not None and ((value != 0) & (value != 1)).any():
                raise ValueError(f"for binary (B, 1) logits `{name}` must be 0 or 1")
        if source_t is None:
            source_t = 1 - target_t if target_t is not None else _predict(logits)
        if target_t is None:
            target_t = 1 - source_t
        if (source_t == target_t).any():
            raise ValueError("`source` and `target` must differ for every sample")
        return source_t, target_t
    num_classes = logits.shape[1]
    for name, value in (("source", source_t), ("target", target_t)):
        if value is not None and ((value < 0) | (value >= num_classes)).any():
            raise ValueError(f"`{name}` must be class indices in [0, {num_classes}), got {value.tolist()}")
    if source_t is None:
        source_t = logits.argmax(dim=1)
    if target_t is None:
        others = logits.scatter(1, source_t[:, None], float("-inf"))
        target_t = others.argmax(dim=1)
    if (source_t == target_t).any():
        raise ValueError("`source` and `target` must differ for every sample")
    return source_t, target_t


def _newton_to_boundary(
    model: Model,
    x: Tensor,
    margin: _PairMargin,
    margin_value: Tensor,
    gradient: Tensor,
    tolerance: float,
    max_iterations: int,
    clamp: tuple[float, float] | None,
) -> tuple[Tensor, Tensor]:
    """Newton steps on ``g`` until ``|g| <= tolerance``: returns the (B, ...) points and (B,) clamped."""
    point = x
    clamped = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    tiny = torch.finfo(x.dtype).tiny
    for iteration in range(max_iterations):
        active = margin_value.abs() > tolerance
        if not active.any():
            break
        step = margin_value / (_flat_norm(gradient) ** 2).clamp_min(tiny)
        candidate = point - _expand(step * active, gradient) * gradient
        if clamp is not None:
            clipped = candidate.clamp(*clamp)
            clamped |= (clipped != candidate).flatten(1).any(dim=1)
            candidate = clipped
        point = candidate
        if iteration + 1 < max_iterations:
            margin_value, gradient, _ = input_gradient(model, point, margin)
    return point, clamped


def _nearest_on_boundary(
    model: Model,
    x: Tensor,
    margin: _PairMargin,
    start: Tensor,
    start_clamped: Tensor,
    tolerance: float,
    max_iterations: int,
    clamp: tuple[float, float] | None,
    refinements: int,
) -> tuple[Tensor, Tensor]:
    """The closest boundary points found from ``start`` (see ``"nearest"`` in :func:`counterfactual`):
    returns the (B, ...) points and (B,) clamped.

    Each sample keeps its own fraction of the way to the projection: 1/2, halved whenever the point
    it leads to is not closer (past a kink of a piecewise-linear boundary a long move lands farther).
    """
    tiny = torch.finfo(x.dtype).tiny
    point, clamped = start, start_clamped
    value, gradient, _ = input_gradient(model, point, margin)
    distance = torch.where(value.abs() <= tolerance, _flat_norm(point - x), torch.inf)
    fraction = torch.full_like(distance, 0.5)
    for _ in range(refinements):
        linear_at_x = value + (gradient * (x - point)).flatten(1).sum(dim=1)
        projection = (
            x - _expand(linear_at_x / (_flat_norm(gradient) ** 2).clamp_min(tiny), gradient) * gradient
        )
        candidate = point + _expand(fraction, x) * (projection - point)
        candidate_clamped = clamped
        if clamp is not None:
            clipped = candidate.clamp(*clamp)
            candidate_clamped = clamped | (clipped != candidate).flatten(1).any(dim=1)
            candidate = clipped
        candidate_value, candidate_gradient, _ = input_gradient(model, candidate, margin)
        landed, landed_clamped = _newton_to_boundary(
            model, candidate, margin, candidate_value, candidate_gradient, tolerance, max_iterations, clamp
        )
        landed_value, landed_gradient, _ = input_gradient(model, landed, margin)
        landed_distance = _flat_norm(landed - x)
        closer = (landed_value.abs() <= tolerance) & (landed_distance < distance)
        point = torch.where(_expand(closer, x), landed, point)
        clamped = torch.where(closer, landed_clamped | candidate_clamped, clamped)
        value = torch.where(closer, landed_value, value)
        gradient = torch.where(_expand(closer, gradient), landed_gradient, gradient)
        distance = torch.where(closer, landed_distance, distance)
        fraction = torch.where(closer, fraction, fraction / 2)
        if bool((fraction < 2**-6).all()):
            break
    return point, clamped


def _flat_norm(tensor: Tensor) -> Tensor:
    return tensor.flatten(1).norm(dim=1)


def _expand(values: Tensor, like: Tensor) -> Tensor:
    """Append singleton dims to ``values`` so that it broadcasts against ``like``."""
    return values.reshape(*values.shape, *([1] * (like.ndim - values.ndim)))
