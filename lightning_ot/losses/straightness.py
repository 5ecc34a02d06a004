"""Straightness penalty: ask the margin to fall at its full rate along the straight gradient line.

The optimal hKR potential is affine with slope 1 along the rays of the optimal transport between the
classes, and its gradient points along them (Serrurier et al., "Achieving robustness in classification
using optimal transport with hinge regularization", CVPR 2021; Serrurier et al., NeurIPS 2023): from a
point ``x`` with margin ``g(x)``, the straight line ``x - t grad g(x) / ||grad g(x)||`` reaches the
decision boundary at the first-order distance ``t = g(x) / ||grad g(x)||``. A trained network only
approaches that optimum, and its gradient lines bend: the margin falls more slowly than at ``x``, and
the first-order counterfactual stops short of the boundary. This penalty is how much less than
predicted the margin fell on the way to the first-order boundary point, the margin left there. It
trains the network at both ends of the move, is zero at the optimum (so it does not move it), and
costs one input gradient and one extra forward pass.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from lightning_ot.losses.functional import _global_sum, check_class_indices, to_signed_targets

__all__ = ["StraightnessPenalty", "straightness_penalty"]


def _check_step(step: float) -> None:
    if not step > 0:
        raise ValueError(f"`step` must be > 0 (1 = the first-order boundary point), got {step}")


def _pair_margin(logits: Tensor, target: Tensor) -> tuple[Tensor, Callable[[Tensor], Tensor]]:
    """``g(x)`` of each sample, and the map from other logits to ``g`` of the same pairs of classes.

    Binary (B, 1) logits: ``g = y f`` with ``y`` in {-1, +1}. (B, C) logits: ``g = f_y - f_j``, ``j``
    the runner-up class at ``x`` (the nearest boundary to first order), kept fixed.
    """
    if logits.ndim == 1 or (logits.ndim == 2 and logits.shape[1] == 1):
        scores = logits.reshape(-1)
        signs = to_signed_targets(target, scores.shape[0]).to(scores.dtype)
        return signs * scores, lambda other: signs * other.reshape(-1)
    if logits.ndim != 2:
        raise ValueError(f"`logits` must have shape (B,), (B, 1) or (B, C), got {tuple(logits.shape)}")
    source = check_class_indices(target, logits.shape[0], logits.shape[1])[:, None]
    runner_up = logits.detach().scatter(1, source, float("-inf")).argmax(dim=1, keepdim=True)

    def margin(other: Tensor) -> Tensor:
        return (other.gather(1, source) - other.gather(1, runner_up)).squeeze(1)

    return margin(logits), margin


def straightness_penalty(
    model: Callable[[Tensor], Tensor],
    input: Tensor,
    target: Tensor,
    step: float = 1.0,
    logits: Tensor | None = None,
    distributed: bool = True,
) -> Tensor:
    """Mean shortfall of the margin's fall over a straight move of ``step`` first-order boundary distances.

    For each sample with a positive margin ``g(x)`` (binary: ``y f(x)``; multiclass: ``f_y - f_j``
    with ``j`` the runner-up at ``x``), ``x' = x - step g(x) grad g(x) / ||grad g(x)||^2``, and the
    penalty is the amount by which ``g`` fell less than its first-order prediction ``step g(x)``:
    ``ReLU(step g(x) - (g(x) - g(x')))``. The move and the prediction are held fixed (no second-order
    gradient), so the penalty trains the network at both ends, raising ``g(x)`` and lowering
    ``g(x')``, as the KR term does between the classes; with ``step = 1`` its value is the margin
    left at the first-order boundary point. The mean is over the samples with a positive margin
    (misclassified samples have no boundary to walk to).

    Args:
        model: maps (B, ...) inputs to (B, 1) binary or (B, C) logits.
        input: (B, ...) inputs.
        target: (B,) labels: {0, 1} or {-1, +1} for binary logits, class indices otherwise.
        step: the move as a multiple of the first-order boundary distance (> 0; 1 = the boundary).
        logits: ``model(input)`` already computed from an ``input`` that requires grad (spares a
            forward pass; its graph is kept for the caller's backward).
        distributed: when ``torch.distributed`` runs, take the mean over the global batch (the sum
            and the count are all-reduced, gradients flow through the local sum), as the KR term
            does: every rank gets the one-process value.

    Returns:
        A 0-d tensor: the mean over the samples of the batch with a positive margin (of the global
        batch, see ``distributed``); 0 when there is none.

    Example:
        >>> linear = torch.nn.Linear(3, 1)  # an affine margin falls exactly as predicted
        >>> straightness_penalty(linear, torch.randn(8, 3), torch.randint(0, 2, (8,))).item() < 1e-6
        True
    """
    _check_step(step)
    if logits is None:
        input = input.detach().requires_grad_(True)
        logits = model(input)
    elif not input.requires_grad:
        raise ValueError(
            "`logits` were given, but `input` does not require grad: compute them from an input that does"
        )
    margin, margin_of = _pair_margin(logits, target)
    (gradient,) = torch.autograd.grad(margin.sum(), input, retain_graph=True)
    squared_norm = gradient.flatten(1).square().sum(dim=1).clamp_min(torch.finfo(gradient.dtype).tiny)
    active = margin.detach() > 0
    predicted_fall = torch.where(active, step * margin.detach(), torch.zeros_like(squared_norm))
    moved = input.detach() - (predicted_fall / squared_norm).view(-1, *[1] * (input.ndim - 1)) * gradient
    moved_margin = margin_of(model(moved))
    shortfall = torch.relu(predicted_fall - (margin - moved_margin))
    total = _global_sum(torch.where(active, shortfall, torch.zeros_like(shortfall)).sum(), distributed)
    count = _global_sum(active.sum().to(shortfall.dtype), distributed)
    return total / count.clamp_min(1.0)


class StraightnessPenalty(nn.Module):
    """Module form of :func:`straightness_penalty`: ``forward(model, input, target, logits=None)``.

    Add it to an hKR loss, ``loss = hkr(logits, target) + weight * penalty(model, input, target)``, to
    straighten the network's gradient lines. On the ten-class ``mnist5k`` digits, weight 30 moved the
    share of held-out digits whose first-order transport of 1.1x flips the class from 7.4 % to 81.7 %,
    and weight 50 with a wider head to 90.6-94.9 %; applied only in the second half of the training
    (``OTClassifier(straightness_start_epoch=0.5)``, the ``mnist5k_straight`` recipe), to 91.3-95.2 %
    over four seeds, in three quarters of the time (``docs/reproduction.md``, "The straightness penalty").

    Args:
        step: the move as a multiple of the first-order boundary distance (> 0).
        distributed: the mean over the global batch under ``torch.distributed``.

    Example:
        >>> model = torch.nn.Sequential(torch.nn.Linear(2, 4), torch.nn.ReLU(), torch.nn.Linear(4, 3))
        >>> penalty = StraightnessPenalty()(model, torch.randn(5, 2), torch.tensor([0, 1, 2, 0, 1]))
        >>> penalty.shape, bool(penalty >= 0)
        (torch.Size([]), True)
    """

    def __init__(self, step: float = 1.0, distributed: bool = True) -> None:
        super().__init__()
        _check_step(step)
        self.step = float(step)
        self.distributed = distributed

    def forward(
        self,
        model: Callable[[Tensor], Tensor],
        input: Tensor,
        target: Tensor,
        logits: Tensor | None = None,
    ) -> Tensor:
        return straightness_penalty(
            model, input, target, step=self.step, logits=logits, distributed=self.distributed
        )

    def extra_repr(self) -> str:
        return f"step={self.step}"
