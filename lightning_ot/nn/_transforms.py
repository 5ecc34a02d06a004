"""Whether a tensor is seen through a function transform, where ``out=`` operations cannot be batched."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["is_transformed"]


def is_transformed(tensor: Tensor) -> bool:
    """Whether ``tensor`` is a ``torch.func`` wrapper (``vmap``, ``grad``, ``jvp``) or a batched tensor
    of the older vmap behind ``torch.autograd.grad(..., is_grads_batched=True)``.

    The fast backward passes of the layers write into preallocated results with ``out=``
    operations, which no vmap can batch; under a transform they use the plain operations instead.
    """
    functorch = torch._C._functorch
    return functorch.is_functorch_wrapped_tensor(tensor) or functorch.is_legacy_batchedtensor(tensor)
