"""Arithmetic settings for the forwards whose logits become certificates."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def ieee_float32() -> Iterator[None]:
    """Float32 convolutions and matrix products in IEEE float32 inside the block, restored after.

    PyTorch runs float32 convolutions in TF32 on GPUs by default (``torch.backends.cudnn.allow_tf32``)
    and matrix products too after ``torch.set_float32_matmul_precision("high")`` or ``"medium"``:
    11 significant bits or fewer, too few for a certified radius. The block turns both off.

    Example:
        >>> with ieee_float32():
        ...     torch.backends.cudnn.allow_tf32, torch.get_float32_matmul_precision()
        (False, 'highest')
    """
    cudnn_tf32 = torch.backends.cudnn.allow_tf32
    matmul_precision = torch.get_float32_matmul_precision()
    if not cudnn_tf32 and matmul_precision == "highest":
        yield
        return
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = cudnn_tf32
        torch.set_float32_matmul_precision(matmul_precision)
