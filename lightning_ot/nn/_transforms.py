"""Whether a tensor is seen through a function transform, where ``out=`` operations cannot be batched."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["is_transformed", "seen_eagerly"]


def is_transformed(tensor: Tensor) -> bool:
    """Whether ``tensor`` is a ``torch.func`` wrapper (``vmap``, ``grad``, ``jvp``) or a batched tensor
    of the older vmap behind ``torch.autograd.grad(..., is_grads_batched=True)``.

    The fast backward passes of the layers write into preallocated results with ``out=``
    operations, which no vmap can batch; under a transform they use the plain operations instead.
    """
    functorch = torch._C._functorch
    return functorch.is_functorch_wrapped_tensor(tensor) or functorch.is_legacy_batchedtensor(tensor)


def seen_eagerly(*tensors: Tensor) -> bool:
    """Whether eager backward-mode autograd sees ``tensors`` as they are: no compiler, TorchScript
    tracer, ``torch.fx`` proxy, ``torch.func`` transform or forward-mode tangent.

    A Function whose backward is written out (and has no forward-mode or vmap rule) applies only
    then; elsewhere the layers use differentiable operations that every transform understands.
    """
    # first: the other tests read Python state that dynamo would trace
    if torch.compiler.is_compiling() or torch.jit.is_tracing():
        return False
    return not any(
        isinstance(tensor, torch.fx.Proxy)
        or is_transformed(tensor)
        or torch.autograd.forward_ad.unpack_dual(tensor).tangent is not None
        for tensor in tensors
    )
