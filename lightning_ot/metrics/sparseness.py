"""Sparseness: the Gini index of an explanation's absolute values."""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric

__all__ = ["Sparseness"]


class Sparseness(Metric):
    """Sparseness (Chalasani et al., *Concise Explanations of Neural Networks using Adversarial
    Training*, ICML 2020) as in Xplique: the Gini index of the absolute explanation.

    With ``a`` the ``n`` absolute values of one explanation (averaged over dim 1 first when
    ``reduce_channels``) sorted in increasing order,
    ``G = 2 sum_i i a_i / (n sum_i a_i) - (n + 1) / n``: 0 for a uniform explanation,
    ``(n - 1) / n`` for a one-hot one, 0 for an all-zero one. The metric is the mean over
    explanations. **Higher is sparser**.

    Args:
        reduce_channels: average the absolute values over dim 1 (channels) before flattening.

    Shape:
        - update: ``explanations`` (B, ...)
        - compute: scalar

    Example:
        >>> metric = Sparseness()
        >>> metric.update(torch.tensor([[0.0, 0.0, 0.0, 2.0], [1.0, 1.0, 1.0, 1.0]]))
        >>> metric.compute()  # mean of 3/4 and 0
        tensor(0.3750)
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    gini_sum: Tensor
    count: Tensor

    def __init__(self, reduce_channels: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        self.reduce_channels = reduce_channels
        self.add_state("gini_sum", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, explanations: Tensor) -> None:
        """Add (B, ...) explanations."""
        if not isinstance(explanations, Tensor) or explanations.ndim < 2:
            raise ValueError("`explanations` must be a (B, ...) tensor")
        values = explanations.detach().double().abs()
        if self.reduce_channels:
            if values.ndim < 3:
                raise ValueError("`reduce_channels=True` needs (B, C, ...) explanations")
            values = values.mean(dim=1)
        values = values.flatten(1).sort(dim=1).values
        n = values.shape[1]
        index = torch.arange(1, n + 1, dtype=values.dtype, device=values.device)
        total = values.sum(dim=1)
        gini = 2 * (values * index).sum(dim=1) / (n * total).clamp_min(1e-300) - (n + 1) / n
        gini = torch.where(total > 0, gini, torch.zeros_like(gini))
        self.gini_sum += gini.sum()
        self.count += values.shape[0]

    def compute(self) -> Tensor:
        return (self.gini_sum / self.count.clamp_min(1)).float()
