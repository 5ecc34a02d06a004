"""Helpers shared by the explanation-quality metrics (plain PyTorch)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from lightning_ot.explain import class_score, explanation_mode

Model = Callable[[Tensor], Tensor]


def store_model(metric: nn.Module, name: str, model: Callable) -> None:
    """Keep ``model`` on the metric without registering it as a submodule (no parameters in the
    metric's state dict, no device moves of the user's model)."""
    if not callable(model):
        raise TypeError(f"`{name}` must be callable (a model or an explainer), got {type(model).__name__}")
    object.__setattr__(metric, name, model)


def feature_scores(inputs: Tensor, explanations: Tensor) -> Tensor:
    """(B, N) importance of each feature: a spatial position of (B, C, *S) inputs (channels of the
    explanation averaged), or a value of (B, D) inputs.

    Accepted explanation shapes: (B, *S), (B, 1, *S) or (B, C, *S) for (B, C, *S) inputs;
    (B, D) for (B, D) inputs.
    """
    if inputs.ndim < 2:
        raise ValueError(f"`inputs` must be a batch (B, ...), got shape {tuple(inputs.shape)}")
    if explanations.shape[0] != inputs.shape[0]:
        raise ValueError(f"`explanations` has {explanations.shape[0]} samples for {inputs.shape[0]} inputs")
    if inputs.ndim == 2:
        if explanations.shape != inputs.shape:
            raise ValueError(
                f"for (B, D) inputs `explanations` must be (B, D), got {tuple(explanations.shape)}"
            )
        return explanations.float()
    spatial = inputs.shape[2:]
    if explanations.shape[1:] == spatial:
        return explanations.flatten(1).float()
    if (
        explanations.ndim == inputs.ndim
        and explanations.shape[2:] == spatial
        and explanations.shape[1]
        in (
            1,
            inputs.shape[1],
        )
    ):
        return explanations.float().mean(dim=1).flatten(1)
    raise ValueError(
        f"`explanations` of shape {tuple(explanations.shape)} do not match inputs {tuple(inputs.shape)}: "
        f"expected (B, *S), (B, 1, *S) or (B, C, *S) with S = {tuple(spatial)}"
    )


def replace_features(inputs: Tensor, mask: Tensor, replacement: Tensor | float) -> Tensor:
    """``inputs`` with the features where ``mask`` (..., B, N) is True set to ``replacement``.

    Returns (..., B, *inputs.shape[1:]); a feature is a spatial position (every channel) or a value.
    """
    mask_full = mask if inputs.ndim == 2 else mask.reshape(*mask.shape[:-1], 1, *inputs.shape[2:])
    return torch.where(
        mask_full, torch.as_tensor(replacement, dtype=inputs.dtype, device=inputs.device), inputs
    )


def batched_scores(model: Model, inputs: Tensor, target: Tensor | None, batch_size: int) -> Tensor:
    """(N,) explained score (:func:`~lightning_ot.explain.class_score`) of (N, ...) inputs, in chunks."""
    scores = []
    with explanation_mode(model, inputs), torch.no_grad():
        for start in range(0, inputs.shape[0], batch_size):
            chunk_target = None if target is None else target[start : start + batch_size]
            scores.append(class_score(model(inputs[start : start + batch_size]), chunk_target))
    return torch.cat(scores)


def resolve_target(model: Model, inputs: Tensor, target: Tensor | int | None) -> Tensor | None:
    """Fix the explained class on the clean inputs (multiclass: the prediction; binary: None = ``f``)."""
    if target is not None:
        target = torch.as_tensor(target, device=inputs.device).long().reshape(-1)
        return target.expand(inputs.shape[0]) if target.numel() == 1 else target
    with explanation_mode(model, inputs), torch.no_grad():
        logits = model(inputs)
    if logits.ndim == 2 and logits.shape[1] > 1:
        return logits.argmax(dim=1)
    return None


def average_ranks(values: Tensor) -> Tensor:
    """(B, N) ranks (0-based) of each row's values, tied values sharing their average rank."""
    sorted_values, order = values.sort(dim=1)
    new_group = torch.ones_like(sorted_values, dtype=torch.long)
    new_group[:, 1:] = (sorted_values[:, 1:] != sorted_values[:, :-1]).long()
    group = new_group.cumsum(dim=1) - 1
    positions = torch.arange(values.shape[1], device=values.device, dtype=torch.float64).expand_as(group)
    first = torch.full(values.shape, float(values.shape[1]), dtype=torch.float64, device=values.device)
    first = first.scatter_reduce(1, group, positions, reduce="amin")
    last = torch.zeros(values.shape, dtype=torch.float64, device=values.device)
    last = last.scatter_reduce(1, group, positions, reduce="amax")
    sorted_ranks = ((first + last) / 2).gather(1, group)
    return torch.empty_like(sorted_ranks).scatter_(1, order, sorted_ranks)


def spearman(first: Tensor, second: Tensor) -> Tensor:
    """(B,) Spearman rank correlation between rows of two (B, N) tensors (ties get their average
    rank); 0 where either row is constant (as Xplique does)."""
    first_ranks = average_ranks(first)
    second_ranks = average_ranks(second)
    first_ranks = first_ranks - first_ranks.mean(dim=1, keepdim=True)
    second_ranks = second_ranks - second_ranks.mean(dim=1, keepdim=True)
    denominator = first_ranks.norm(dim=1) * second_ranks.norm(dim=1)
    correlation = (first_ranks * second_ranks).sum(dim=1) / denominator.clamp_min(1e-300)
    return torch.where(denominator > 0, correlation, torch.zeros_like(correlation)).to(first.dtype)


def check_positive(name: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"`{name}` must be > 0, got {value}")
