"""What every explanation shares: the explained score, input gradients, and the gradient context."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from lightning_ot.nn._cache import cached_weights

__all__ = ["class_score", "explanation_mode", "input_gradient", "is_binary", "reduce_explanation"]

Model = Callable[[Tensor], Tensor]

REDUCTIONS = (None, "sum", "mean", "max", "norm")


def is_binary(logits: Tensor) -> bool:
    """Whether ``logits`` are binary scores: (B,) or (B, 1)."""
    return logits.ndim == 1 or (logits.ndim == 2 and logits.shape[1] == 1)


def check_input(input: Tensor, name: str = "x") -> None:
    if not isinstance(input, Tensor):
        raise TypeError(f"`{name}` must be a tensor, got {type(input).__name__}")
    if input.ndim < 2 or input.shape[0] == 0:
        raise ValueError(f"`{name}` must be a non-empty batch (B, ...), got shape {tuple(input.shape)}")
    if not input.is_floating_point():
        raise TypeError(f"`{name}` must be a floating-point tensor, got {input.dtype}")


def check_target(target: Tensor | int | None, batch_size: int, device: torch.device) -> Tensor | None:
    """``target`` as a (B,) long tensor (an int is broadcast), or None."""
    if target is None:
        return None
    target = torch.as_tensor(target, device=device)
    if target.is_floating_point() or target.is_complex():
        raise TypeError(f"`target` must hold class indices (integers), got {target.dtype}")
    target = target.long().reshape(-1)
    if target.numel() == 1:
        return target.expand(batch_size)
    if target.numel() != batch_size:
        raise ValueError(
            f"`target` must have one class index per sample ({batch_size}), got {target.numel()}"
        )
    return target


def class_score(logits: Tensor, target: Tensor | int | None = None) -> Tensor:
    """(B,) score explained for each sample: the logit of the class explained.

    - binary (B,) or (B, 1) logits ``f``: ``f`` itself when ``target`` is None; when ``target`` is
      given, the evidence for that class: ``f`` for class 1, ``-f`` for class 0 (Xplique's {-1, +1}
      target convention);
    - multiclass (B, C): ``f_target``, the predicted class's logit when ``target`` is None.

    Example:
        >>> class_score(torch.tensor([[1.0, 3.0], [2.0, 0.0]]))
        tensor([3., 2.])
        >>> class_score(torch.tensor([[0.5], [0.5]]), torch.tensor([1, 0]))
        tensor([ 0.5000, -0.5000])
    """
    if logits.ndim not in (1, 2):
        raise ValueError(f"the model must return (B,), (B, 1) or (B, C) logits, got {tuple(logits.shape)}")
    target = check_target(target, logits.shape[0], logits.device)
    if is_binary(logits):
        scores = logits.reshape(-1)
        if target is None:
            return scores
        if ((target != 0) & (target != 1)).any():
            raise ValueError("for binary (B, 1) logits `target` must be 0 or 1")
        return torch.where(target == 1, scores, -scores)
    if target is None:
        target = logits.argmax(dim=1)
    elif ((target < 0) | (target >= logits.shape[1])).any():
        raise ValueError(f"`target` must be class indices in [0, {logits.shape[1]}), got {target.tolist()}")
    return logits.gather(1, target[:, None]).squeeze(1)


# id -> whether it is parametrized, for the models inside an explanation_mode (the metrics and the
# boundary search enter it again for every batch; scanning the modules took ~0.1 ms each time)
_parametrized_models: dict[int, bool] = {}


@contextmanager
def explanation_mode(model: Model, example: Tensor | None = None) -> Iterator[None]:
    """Context in which input gradients of ``model`` can be computed, cheaply and anywhere.

    - gradients are enabled even under ``torch.no_grad()`` or ``torch.inference_mode()`` (e.g. inside
      Lightning's ``trainer.validate()``); inputs created under inference mode must be cloned inside;
    - the constrained weights of :mod:`lightning_ot.nn` layers are computed once (certified, without
      a graph to the parameters) and reused by every forward pass inside, even in training mode
      (:func:`~lightning_ot.nn.cached_weights`); so are weights computed by
      ``torch.nn.utils.parametrize`` (any third-party parametrized model); nested contexts reuse the
      outer cache.

    Parameters are not modified and their ``.grad`` is never touched.

    Args:
        model: the network.
        example: (B, ...) input used for one forward pass that fills the weight cache (one sample of
            it is enough; without it the cache fills on the first forward pass, with a graph).

    Example:
        >>> model = torch.nn.Linear(3, 1)
        >>> with torch.inference_mode():
        ...     with explanation_mode(model):
        ...         x = torch.ones(2, 3).requires_grad_()
        ...         model(x).sum().backward()
        >>> x.grad.shape
        torch.Size([2, 3])
    """
    with ExitStack() as stack:
        stack.enter_context(torch.inference_mode(False))
        stack.enter_context(torch.enable_grad())
        stack.enter_context(cached_weights())
        parametrized = _parametrized_models.get(id(model))
        if parametrized is None:  # the outermost context of this model: look for parametrizations once
            parametrized = isinstance(model, nn.Module) and any(
                parametrize.is_parametrized(m) for m in model.modules()
            )
            _parametrized_models[id(model)] = parametrized
            stack.callback(_parametrized_models.pop, id(model), None)
        if parametrized:
            # Nested inside another explanation_mode: the weights are already cached, no warm-up pass.
            nested = getattr(parametrize, "_cache_enabled", 0) > 0
            stack.enter_context(parametrize.cached())
            if example is not None and not nested:
                with torch.no_grad():
                    model(example[:1].clone())
        yield


def input_gradient(
    model: Model, input: Tensor, score: Callable[[Tensor], Tensor]
) -> tuple[Tensor, Tensor, Tensor]:
    """Scores and their input gradients, batched, in one backward pass.

    Args:
        model: maps (B, ...) inputs to logits; samples must not interact (eval mode).
        input: (B, ...) inputs.
        score: maps the (B, ...) logits to (B,) scores.

    Returns:
        ``(scores (B,), gradient (B, ...), logits)``, all detached.
    """
    with torch.inference_mode(False), torch.enable_grad():
        input = input.detach().clone().requires_grad_(True)
        logits = model(input)
        scores = score(logits)
        (gradient,) = torch.autograd.grad(scores.sum(), input)
    return scores.detach(), gradient.detach(), logits.detach()


def reduce_explanation(explanation: Tensor, reduce_channels: str | None, absolute: bool) -> Tensor:
    """Apply ``absolute`` then the channel reduction (dim 1, kept) to a (B, C, ...) explanation."""
    if reduce_channels not in REDUCTIONS:
        raise ValueError(f"`reduce_channels` must be one of {REDUCTIONS}, got {reduce_channels!r}")
    if absolute:
        explanation = explanation.abs()
    if reduce_channels is None:
        return explanation
    if explanation.ndim < 3:
        raise ValueError(
            "`reduce_channels` needs (B, C, ...) inputs with a channel dimension, "
            f"got {tuple(explanation.shape)}"
        )
    if reduce_channels == "sum":
        return explanation.sum(dim=1, keepdim=True)
    if reduce_channels == "mean":
        return explanation.mean(dim=1, keepdim=True)
    if reduce_channels == "max":
        return explanation.amax(dim=1, keepdim=True)
    return explanation.norm(dim=1, keepdim=True)
