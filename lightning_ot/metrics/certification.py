"""Certified robustness of Lipschitz classifiers: radii and certified robust accuracy."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor
from torchmetrics import Metric

__all__ = ["CertifiedRobustAccuracy", "certified_radius", "predicted_labels"]

OutputLipschitz = Literal["joint", "per_output"]


def predicted_labels(logits: Tensor) -> Tensor:
    """Predicted class: ``f > 0`` for binary (B,) / (B, 1) logits, ``argmax`` for (B, C) logits.

    Example:
        >>> predicted_labels(torch.tensor([[0.3], [-0.2]]))
        tensor([1, 0])
    """
    if logits.ndim == 1 or (logits.ndim == 2 and logits.shape[1] == 1):
        return (logits.reshape(-1) > 0).long()
    if logits.ndim != 2:
        raise ValueError(f"`logits` must have shape (B,), (B, 1) or (B, C), got {tuple(logits.shape)}")
    return logits.argmax(dim=1)


def certified_radius(
    logits: Tensor, lipschitz: float = 1.0, output_lipschitz: OutputLipschitz = "joint"
) -> Tensor:
    """L2 radius around each input within which the prediction provably cannot change.

    For ``f`` L-Lipschitz in the L2 norm:

    - binary (B,) or (B, 1) logits: ``|f(x)| / L``;
    - multiclass (B, C): ``(f_top1 - f_top2) / (sqrt(2) L)`` when the whole output vector is
      L-Lipschitz (``output_lipschitz="joint"``, the case of every network in this project: each
      difference ``f_i - f_j`` is then ``sqrt(2) L``-Lipschitz), or ``/ (2 L)`` when only each output
      is separately L-Lipschitz (``"per_output"``).

    Args:
        logits: (B,), (B, 1) or (B, C) scores.
        lipschitz: the network's Lipschitz constant ``L`` (input normalization included).
        output_lipschitz: what ``L`` bounds, see above.

    Returns:
        (B,) non-negative radii, in float32 or the logits' dtype if wider.

    Example:
        >>> certified_radius(torch.tensor([[3.0, 1.0, 0.0]]), lipschitz=1.0)
        tensor([1.4142])
    """
    if lipschitz <= 0 or not math.isfinite(lipschitz):
        raise ValueError(f"`lipschitz` must be a positive finite number, got {lipschitz}")
    logits = logits.detach()
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    if logits.ndim == 1 or (logits.ndim == 2 and logits.shape[1] == 1):
        return logits.reshape(-1).abs() / lipschitz
    if logits.ndim != 2:
        raise ValueError(f"`logits` must have shape (B,), (B, 1) or (B, C), got {tuple(logits.shape)}")
    if output_lipschitz == "joint":
        factor = math.sqrt(2.0)
    elif output_lipschitz == "per_output":
        factor = 2.0
    else:
        raise ValueError(f"`output_lipschitz` must be 'joint' or 'per_output', got {output_lipschitz!r}")
    top2 = logits.topk(2, dim=1).values
    return (top2[:, 0] - top2[:, 1]) / (factor * lipschitz)


class CertifiedRobustAccuracy(Metric):
    """Fraction of samples classified correctly with a certified radius larger than each ``eps``.

    ``eps = 0`` gives the clean accuracy. States are sums, so the metric syncs across processes.

    Args:
        eps: radii at which to certify (L2, in input units).
        lipschitz: the network's Lipschitz constant.
        output_lipschitz: see :func:`certified_radius`.

    Shape:
        - update: logits (B,), (B, 1) or (B, C); target (B,) labels ({0, 1} or {-1, +1} for binary)
        - compute: (len(eps),)

    Example:
        >>> metric = CertifiedRobustAccuracy(eps=[0.0, 0.5])
        >>> metric.update(torch.tensor([[1.0], [-0.2]]), torch.tensor([1, 0]))
        >>> metric.compute()
        tensor([1.0000, 0.5000])
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    certified: Tensor
    total: Tensor

    def __init__(
        self,
        eps: Sequence[float] = (0.0, 0.1, 0.3),
        lipschitz: float = 1.0,
        output_lipschitz: OutputLipschitz = "joint",
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if len(eps) == 0 or any(e < 0 for e in eps):
            raise ValueError(f"`eps` must be a non-empty list of radii >= 0, got {list(eps)}")
        self.eps = [float(e) for e in eps]
        self.lipschitz = float(lipschitz)
        self.output_lipschitz = output_lipschitz
        self.add_state(
            "certified", default=torch.zeros(len(self.eps), dtype=torch.long), dist_reduce_fx="sum"
        )
        self.add_state("total", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, logits: Tensor, target: Tensor) -> None:
        predictions = predicted_labels(logits)
        target = target.reshape(-1)
        if target.shape[0] != predictions.shape[0]:
            raise ValueError(f"`target` has {target.shape[0]} labels for {predictions.shape[0]} predictions")
        if logits.ndim == 1 or logits.shape[-1] == 1:
            target = (target > 0).long()
        correct = predictions == target.long()
        radius = certified_radius(logits, self.lipschitz, self.output_lipschitz)
        eps = torch.tensor(self.eps, device=radius.device, dtype=radius.dtype)
        # eps == 0 counts every correct prediction (a radius of exactly 0 still classifies correctly).
        certified = correct[:, None] & ((radius[:, None] > eps) | (eps == 0))
        self.certified += certified.sum(0)
        self.total += correct.shape[0]

    def compute(self) -> Tensor:
        return self.certified.float() / self.total.clamp_min(1)
