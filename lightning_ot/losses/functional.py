"""Functional forms of the hinge-Kantorovich-Rubinstein (hKR) loss family.

Conventions (the paper's, Serrurier et al. 2021 and 2023):

    KR(f)    = mean_{y=+1} f(x) - mean_{y=-1} f(x)        (class-balanced means)
    hinge(f) = mean ReLU(margin - y f(x))
    hKR(f)   = hinge_weight * hinge(f) - KR(f)

``margin`` is the distance from the decision boundary that each class is pushed to, on its own side.
See :mod:`lightning_ot.losses.conversion` for deel-lip and deel-torchlip parameters.

Every function works in a plain PyTorch loop. When ``torch.distributed`` is initialized with more than
one process and ``distributed=True``, the class means of the KR term are taken over the *global* batch
(per-class sums and counts are all-reduced, gradients flow through the local sums), so that, combined
with the gradient averaging of ``DistributedDataParallel``, ``W`` ranks with batch ``b`` give the same
loss and gradients as one rank with batch ``W * b``.
"""

from __future__ import annotations

import math
from numbers import Real
from typing import NamedTuple

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn
from torch import Tensor

__all__ = [
    "HKRTerms",
    "binary_hkr",
    "check_loss_parameters",
    "hinge_margin",
    "kantorovich_rubinstein",
    "multiclass_hkr",
    "soft_hkr",
    "soft_hkr_temperature",
    "to_signed_targets",
]


class HKRTerms(NamedTuple):
    """The value of an hKR loss and its two components (each a 0-d tensor).

    ``loss = hinge_weight * hinge - kr``; ``kr`` is the (soft) Kantorovich-Rubinstein dual estimate of
    the Wasserstein-1 distance between the classes (larger is better), ``hinge`` the margin violation.
    """

    loss: Tensor
    kr: Tensor
    hinge: Tensor


def _distributed_world() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _global_sum(tensor: Tensor, distributed: bool) -> Tensor:
    """Sum over all processes, differentiable (the backward all-reduces the gradient)."""
    if distributed and _distributed_world():
        return dist_nn.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


_RANGES = {
    "margin": (0.0, False, math.inf),  # (lower bound, lower bound allowed, upper bound excluded)
    "hinge_weight": (0.0, True, math.inf),
    "temperature": (0.0, False, math.inf),
    "momentum": (0.0, True, 1.0),
}
_EXPECTED = {
    "margin": "a finite number > 0",
    "hinge_weight": "a finite number >= 0",
    "temperature": "a finite number > 0",
    "momentum": "a number in [0, 1)",
}


def check_loss_parameters(**parameters: float | Tensor) -> None:
    """Raise a ``ValueError`` naming any hKR parameter that is not finite or out of its range.

    ``margin > 0``, ``hinge_weight >= 0``, ``temperature > 0`` (all finite), ``momentum`` in [0, 1).
    Tensors (an adaptive temperature) are not checked: that would need a host sync at every step.

    Example:
        >>> check_loss_parameters(margin=0.5, temperature=float("inf"))
        Traceback (most recent call last):
        ...
        ValueError: `temperature` must be a finite number > 0, got inf
    """
    for name, value in parameters.items():
        if isinstance(value, Tensor):
            continue
        low, low_allowed, high = _RANGES[name]
        valid = (
            isinstance(value, Real)
            and not isinstance(value, bool)
            and math.isfinite(value)
            and (value >= low if low_allowed else value > low)
            and value < high
        )
        if not valid:
            raise ValueError(f"`{name}` must be {_EXPECTED[name]}, got {value!r}")


def _flatten_binary_logits(logits: Tensor) -> Tensor:
    if logits.ndim == 2 and logits.shape[1] == 1:
        return logits[:, 0]
    if logits.ndim == 1:
        return logits
    raise ValueError(
        f"binary hKR expects `logits` of shape (B,) or (B, 1), got {tuple(logits.shape)}; "
        "use `multiclass_hkr` or `soft_hkr` for (B, C) logits"
    )


def _check_finite(logits: Tensor) -> None:
    if not torch.isfinite(logits).all():
        bad = (~torch.isfinite(logits)).sum().item()
        raise ValueError(f"`logits` contains {bad} non-finite value(s) (NaN or inf)")


def to_signed_targets(target: Tensor, batch_size: int) -> Tensor:
    """Map binary labels in {0, 1} or {-1, +1} to float signs in {-1, +1}.

    Args:
        target: (B,) or (B, 1) labels, integer, boolean or float.
        batch_size: the expected ``B``.

    Returns:
        (B,) float tensor of -1 and +1.

    Example:
        >>> to_signed_targets(torch.tensor([0, 1, 1]), 3)
        tensor([-1.,  1.,  1.])
    """
    if target.ndim == 2 and target.shape[1] == 1:
        target = target[:, 0]
    if target.ndim != 1 or target.shape[0] != batch_size:
        raise ValueError(
            f"binary `target` must have shape ({batch_size},) or ({batch_size}, 1) to match the logits, "
            f"got {tuple(target.shape)}"
        )
    values = torch.unique(target.detach())
    if bool(((values != 0) & (values != 1) & (values != -1)).any()):
        raise ValueError(
            f"binary `target` must hold labels in {{0, 1}} or {{-1, +1}}, got values {values.tolist()[:10]}"
        )
    target = target.to(torch.float32)
    if bool((target == 0).any()):
        if bool((target == -1).any()):
            raise ValueError("binary `target` mixes 0 and -1 labels: use either {0, 1} or {-1, +1}")
        target = 2.0 * target - 1.0
    return target


def check_class_indices(target: Tensor, batch_size: int, num_classes: int) -> Tensor:
    if target.ndim != 1 or target.shape[0] != batch_size:
        raise ValueError(
            f"multiclass `target` must be class indices of shape ({batch_size},), got {tuple(target.shape)}"
        )
    if target.is_floating_point() or target.dtype == torch.bool:
        raise ValueError(f"multiclass `target` must be integer class indices, got dtype {target.dtype}")
    if target.numel() and (int(target.min()) < 0 or int(target.max()) >= num_classes):
        raise ValueError(
            f"multiclass `target` must hold class indices in [0, {num_classes - 1}] for logits with "
            f"{num_classes} columns, got values in [{int(target.min())}, {int(target.max())}]"
        )
    return target.long()


def kantorovich_rubinstein(
    logits: Tensor, signs: Tensor, distributed: bool = True, weight: Tensor | None = None
) -> Tensor:
    """Class-balanced KR estimate ``mean_{y=+1} f - mean_{y=-1} f``, column by column.

    Args:
        logits: (B,) or (B, K) scores.
        signs: same shape as ``logits``, -1 / +1.
        distributed: take the class means over all processes when ``torch.distributed`` runs.
        weight: optional non-negative per-entry weights, same shape as ``logits`` (weighted means).

    Returns:
        0-d tensor: the mean over columns of each column's KR estimate. A column whose global batch
        lacks one of the classes contributes only the class it has.

    Example:
        >>> kantorovich_rubinstein(torch.tensor([2.0, 1.0, -1.0]), torch.tensor([1.0, 1.0, -1.0]))
        tensor(2.5000)
    """
    positive = (signs > 0).to(logits.dtype)
    negative = 1.0 - positive
    if weight is not None:
        positive, negative = positive * weight, negative * weight
    sums = torch.stack([(logits * positive).sum(0), (logits * negative).sum(0)])
    counts = torch.stack([positive.sum(0), negative.sum(0)]).detach()
    sums = _global_sum(sums, distributed)
    counts = _global_sum(counts.clone(), distributed)
    means = sums / counts.clamp_min(torch.finfo(counts.dtype).tiny)
    return (means[0] - means[1]).mean()


def hinge_margin(logits: Tensor, signs: Tensor, margin: float) -> Tensor:
    """Mean hinge ``ReLU(margin - y f)`` over all entries.

    Args:
        logits: (B,) or (B, K) scores.
        signs: same shape, -1 / +1.
        margin: distance from the boundary each class is pushed to.

    Example:
        >>> hinge_margin(torch.tensor([0.5, -2.0]), torch.tensor([1.0, -1.0]), margin=1.0)
        tensor(0.2500)
    """
    check_loss_parameters(margin=margin)
    return torch.relu(margin - signs * logits).mean()


def binary_hkr(
    logits: Tensor,
    target: Tensor,
    margin: float = 1.0,
    hinge_weight: float = 10.0,
    distributed: bool = True,
    check_inputs: bool = True,
) -> HKRTerms:
    """Binary hKR loss ``hinge_weight * hinge - KR``.

    Args:
        logits: (B,) or (B, 1) scores; positive means class 1 (or +1).
        target: (B,) or (B, 1) labels in {0, 1} or {-1, +1}.
        margin: the margin ``m`` of the hinge, on each side of the boundary.
        hinge_weight: the weight ``lambda`` of the hinge against KR.
        distributed: KR class means over all processes when ``torch.distributed`` runs.
        check_inputs: validate shapes, label values and finiteness (one host sync).

    Example:
        >>> terms = binary_hkr(torch.tensor([2.0, -1.0]), torch.tensor([1, 0]), margin=1.0, hinge_weight=1.0)
        >>> terms.loss, terms.kr, terms.hinge
        (tensor(-3.), tensor(3.), tensor(0.))
    """
    check_loss_parameters(margin=margin, hinge_weight=hinge_weight)
    scores = _flatten_binary_logits(logits)
    if check_inputs:
        _check_finite(scores)
    signs = to_signed_targets(target, scores.shape[0]).to(scores.dtype)
    kr = kantorovich_rubinstein(scores, signs, distributed)
    hinge = hinge_margin(scores, signs, margin)
    return HKRTerms(hinge_weight * hinge - kr, kr, hinge)


def multiclass_hkr(
    logits: Tensor,
    target: Tensor,
    margin: float = 1.0,
    hinge_weight: float = 10.0,
    distributed: bool = True,
    check_inputs: bool = True,
) -> HKRTerms:
    """One-vs-all multiclass hKR: the binary hKR on each column (target +1, the others -1), averaged.

    Args:
        logits: (B, C) scores.
        target: (B,) class indices in [0, C).

    Example:
        >>> logits = torch.tensor([[1.0, -1.0], [-1.0, 1.0]])
        >>> multiclass_hkr(logits, torch.tensor([0, 1]), margin=1.0, hinge_weight=1.0).kr
        tensor(2.)
    """
    check_loss_parameters(margin=margin, hinge_weight=hinge_weight)
    if logits.ndim != 2:
        raise ValueError(f"multiclass hKR expects `logits` of shape (B, C), got {tuple(logits.shape)}")
    if check_inputs:
        _check_finite(logits)
        target = check_class_indices(target, logits.shape[0], logits.shape[1])
    signs = 2.0 * torch.nn.functional.one_hot(target.long(), logits.shape[1]).to(logits.dtype) - 1.0
    kr = kantorovich_rubinstein(logits, signs, distributed)
    hinge = hinge_margin(logits, signs, margin)
    return HKRTerms(hinge_weight * hinge - kr, kr, hinge)


def soft_hkr_temperature(temperature: float, margin: float, mean_abs_logit: Tensor | float) -> Tensor:
    """Effective softmax temperature ``temperature * margin / mu`` of the soft hKR (no gradient).

    ``mu`` (the running mean of ``|f|``) is clamped below at ``margin / 100`` so that an untrained
    network with tiny outputs does not get an exploding temperature.
    """
    check_loss_parameters(temperature=temperature, margin=margin)
    mean_abs_logit = torch.as_tensor(mean_abs_logit, dtype=torch.float32)
    return (temperature * margin / mean_abs_logit.clamp_min(margin / 100.0)).detach()


def soft_hkr(
    logits: Tensor,
    target: Tensor,
    margin: float = 1.0,
    hinge_weight: float = 10.0,
    temperature: float | Tensor = 10.0,
    check_inputs: bool = True,
) -> HKRTerms:
    """Softmax-weighted multiclass hKR (Serrurier et al., NeurIPS 2023).

    For a sample of class ``y``, the other classes get weights ``w_j = softmax_{j != y}(T f_j)``
    (gradients flow through the weights, not through ``T``), and

        kr    = f_y - sum_{j != y} w_j f_j
        hinge = ReLU(margin - f_y) + sum_{j != y} w_j ReLU(margin + f_j)
        loss  = mean(hinge_weight * hinge - kr)          (means over the batch)

    Here ``temperature`` is the effective ``T`` (see :class:`~lightning_ot.losses.SoftHKRLoss` for the
    adaptive one). The weights let the loss focus on the closest competing classes, which one-vs-all
    hKR cannot do when there are many classes.

    Args:
        logits: (B, C) scores, C >= 2.
        target: (B,) class indices in [0, C).
        temperature: ``T``, a float or 0-d tensor.

    Example:
        >>> logits = torch.tensor([[2.0, -2.0, -2.0]])
        >>> soft_hkr(logits, torch.tensor([0]), margin=1.0, hinge_weight=1.0, temperature=1.0).kr
        tensor(4.)
    """
    check_loss_parameters(margin=margin, hinge_weight=hinge_weight, temperature=temperature)
    if logits.ndim != 2 or logits.shape[1] < 2:
        raise ValueError(f"soft hKR expects `logits` of shape (B, C) with C >= 2, got {tuple(logits.shape)}")
    if check_inputs:
        _check_finite(logits)
        target = check_class_indices(target, logits.shape[0], logits.shape[1])
    is_target = torch.nn.functional.one_hot(target.long(), logits.shape[1]).bool()
    if isinstance(temperature, Tensor):
        temperature = temperature.detach()
    scaled = (logits * temperature).masked_fill(is_target, float("-inf"))
    other_weights = torch.softmax(scaled, dim=1).masked_fill(is_target, 0.0)
    target_logit = logits[is_target]
    kr = target_logit - (other_weights * logits).sum(1)
    hinge = torch.relu(margin - target_logit) + (other_weights * torch.relu(margin + logits)).sum(1)
    kr, hinge = kr.mean(), hinge.mean()
    return HKRTerms(hinge_weight * hinge - kr, kr, hinge)
