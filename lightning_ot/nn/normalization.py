"""Input normalization that reports how it scales the Lipschitz constant."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["Normalize"]


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel, with ``lipschitz_factor = 1 / min(std)``.

    A 1-Lipschitz network placed after this layer is ``lipschitz_factor``-Lipschitz with respect to
    the un-normalized input: certificates must use that constant, which
    :class:`~lightning_ot.OTClassifier` does by default.

    Shape:
        - input: (B, C, *)
        - output: same shape

    Example:
        >>> Normalize(mean=[0.5], std=[0.25]).lipschitz_factor
        4.0
    """

    mean: Tensor
    std: Tensor

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if len(mean) != len(std):
            raise ValueError(f"`mean` and `std` need one value per channel, got {len(mean)} and {len(std)}")
        if any(s <= 0 for s in std):
            raise ValueError(f"`std` must be positive, got {list(std)}")
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32))

    @property
    def lipschitz_factor(self) -> float:
        return float(1.0 / self.std.min())

    def forward(self, input: Tensor) -> Tensor:
        # (B, C, *) -> (B, C, N) views broadcast against (C, 1): no transpose, whatever the rank, so
        # that fx tracing (which does not know the rank) and both ONNX exporters see plain ops
        flat = input.unsqueeze(-1).flatten(2)
        return ((flat - self.mean[:, None]) / self.std[:, None]).view_as(input)

    def extra_repr(self) -> str:
        return f"mean={self.mean.tolist()}, std={self.std.tolist()}"
