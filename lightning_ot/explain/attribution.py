"""Gradient attributions: saliency (the OTNN explanation) and two baselines, SmoothGrad and
Integrated Gradients, for comparing with unconstrained networks."""

from __future__ import annotations

from functools import partial

import torch
from torch import Tensor

from lightning_ot.explain._common import (
    Model,
    check_input,
    check_target,
    class_score,
    explanation_mode,
    input_gradient,
    is_binary,
    reduce_explanation,
)

__all__ = ["integrated_gradients", "saliency", "smoothgrad"]


def _resolve_target(model: Model, input: Tensor, target: Tensor | int | None) -> Tensor | None:
    """Fix the explained class on the clean input: the prediction for multiclass, None for binary."""
    target = check_target(target, input.shape[0], input.device)
    if target is not None:
        return target
    with torch.no_grad():
        logits = model(input)
    return None if is_binary(logits) else logits.argmax(dim=1)


def saliency(
    model: Model,
    x: Tensor,
    target: Tensor | int | None = None,
    reduce_channels: str | None = None,
    absolute: bool = False,
) -> Tensor:
    """Gradient of the explained score with respect to the input, in one batched backward pass.

    For a 1-Lipschitz network trained with the hKR loss this gradient is the direction of the optimal
    transport plan between the classes (Serrurier et al., NeurIPS 2023), hence a faithful saliency map.

    Args:
        model: maps (B, ...) inputs to (B, 1) binary or (B, C) logits; put it in eval mode.
        x: (B, ...) inputs, e.g. (B, C, H, W) images.
        target: (B,) class indices or one int; None explains the predicted class (binary: ``f``
            itself). See :func:`class_score` for binary targets.
        reduce_channels: None to keep the input's shape, or ``"sum"``, ``"mean"``, ``"max"``,
            ``"norm"`` (L2) over dim 1, kept as size 1.
        absolute: take the absolute value (before any channel reduction).

    Returns:
        (B, ...) like ``x``, or (B, 1, ...) with ``reduce_channels``.

    Example:
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 1))
        >>> saliency(model, torch.rand(2, 1, 2, 2)).shape
        torch.Size([2, 1, 2, 2])
    """
    check_input(x)
    with explanation_mode(model, x):
        _, gradient, _ = input_gradient(model, x, partial(class_score, target=target))
    return reduce_explanation(gradient, reduce_channels, absolute)


def smoothgrad(
    model: Model,
    x: Tensor,
    target: Tensor | int | None = None,
    num_samples: int = 50,
    noise_std: float = 0.2,
    batch_size: int = 256,
    reduce_channels: str | None = None,
    absolute: bool = False,
    generator: torch.Generator | None = None,
) -> Tensor:
    """SmoothGrad (Smilkov et al., 2017): the mean gradient over Gaussian-noised copies of the input.

    Defaults are Xplique's: 50 samples, noise standard deviation 0.2 (in input units). The class
    explained is fixed on the clean input.

    Args:
        model, x, target, reduce_channels, absolute: as in :func:`saliency`.
        num_samples: noisy copies per input.
        noise_std: standard deviation of the Gaussian noise.
        batch_size: noisy inputs per forward/backward pass.
        generator: random generator for the noise (on ``x``'s device).

    Returns:
        (B, ...) like ``x``, or (B, 1, ...) with ``reduce_channels``.

    Example:
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 1))
        >>> torch.allclose(smoothgrad(model, torch.rand(2, 4)), model[1].weight.expand(2, 4))
        True
    """
    check_input(x)
    if num_samples < 1:
        raise ValueError(f"`num_samples` must be >= 1, got {num_samples}")
    if noise_std < 0:
        raise ValueError(f"`noise_std` must be >= 0, got {noise_std}")
    if batch_size < 1:
        raise ValueError(f"`batch_size` must be >= 1, got {batch_size}")
    with explanation_mode(model, x):
        target = _resolve_target(model, x, target)
        noisy = x.detach().unsqueeze(1).expand(-1, num_samples, *x.shape[1:])
        noise = torch.randn(noisy.shape, generator=generator, device=x.device, dtype=x.dtype)
        noisy = (noisy + noise_std * noise).flatten(0, 1)
        repeated = None if target is None else target.repeat_interleave(num_samples)
        gradients = _chunked_gradients(model, noisy, repeated, batch_size)
    gradient = gradients.view(x.shape[0], num_samples, *x.shape[1:]).mean(dim=1)
    return reduce_explanation(gradient, reduce_channels, absolute)


def integrated_gradients(
    model: Model,
    x: Tensor,
    target: Tensor | int | None = None,
    baseline: Tensor | float = 0.0,
    steps: int = 50,
    batch_size: int = 256,
    reduce_channels: str | None = None,
    absolute: bool = False,
) -> Tensor:
    """Integrated Gradients (Sundararajan et al., 2017): ``(x - baseline)`` times the mean gradient
    along the straight path from the baseline to ``x``.

    Defaults are Xplique's: a baseline of 0, 50 points from the baseline to ``x`` (both included),
    averaged with the trapezoidal rule. The class explained is fixed on the clean input.

    Args:
        model, x, target, reduce_channels, absolute: as in :func:`saliency`.
        baseline: a number, or a tensor broadcastable to ``x``.
        steps: points on the path (>= 2).
        batch_size: path points per forward/backward pass.

    Returns:
        (B, ...) like ``x``, or (B, 1, ...) with ``reduce_channels``.

    Example:
        >>> model = torch.nn.Linear(3, 1)
        >>> x = torch.rand(2, 3)
        >>> attribution = integrated_gradients(model, x)
        >>> torch.allclose(attribution.sum(1), model(x)[:, 0] - model(torch.zeros(2, 3))[:, 0])
        True
    """
    check_input(x)
    if steps < 2:
        raise ValueError(f"`steps` must be >= 2 (the baseline and the input), got {steps}")
    if batch_size < 1:
        raise ValueError(f"`batch_size` must be >= 1, got {batch_size}")
    baseline = torch.as_tensor(baseline, dtype=x.dtype, device=x.device).expand_as(x)
    with explanation_mode(model, x):
        target = _resolve_target(model, x, target)
        alphas = torch.linspace(0.0, 1.0, steps, dtype=x.dtype, device=x.device)
        alphas = alphas.view(1, steps, *([1] * (x.ndim - 1)))
        start, end = baseline.detach().unsqueeze(1), x.detach().unsqueeze(1)
        path = (start + alphas * (end - start)).flatten(0, 1)
        repeated = None if target is None else target.repeat_interleave(steps)
        gradients = _chunked_gradients(model, path, repeated, batch_size)
    gradients = gradients.view(x.shape[0], steps, *x.shape[1:])
    average = ((gradients[:, :-1] + gradients[:, 1:]) / 2).mean(dim=1)
    return reduce_explanation((x - baseline) * average, reduce_channels, absolute)


def _chunked_gradients(model: Model, inputs: Tensor, target: Tensor | None, batch_size: int) -> Tensor:
    chunks = []
    for start in range(0, inputs.shape[0], batch_size):
        chunk_target = None if target is None else target[start : start + batch_size]
        score = partial(class_score, target=chunk_target)
        chunks.append(input_gradient(model, inputs[start : start + batch_size], score)[1])
    return torch.cat(chunks)
