"""Shared implementation of the Deletion and Insertion metrics (Petsiuk et al., RISE, 2018)."""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric

from lightning_ot.metrics._xai import (
    Model,
    batched_scores,
    feature_scores,
    replace_features,
    resolve_target,
    store_model,
)


class CausalFidelity(Metric):
    """Score of the explained class while features are removed (Deletion) or inserted (Insertion) in
    the order of their importance; the metric is the area under that curve."""

    is_differentiable = False
    full_state_update = False
    inserting: bool

    curve_sum: Tensor
    count: Tensor

    def __init__(
        self,
        model: Model,
        steps: int = 10,
        baseline: float = 0.0,
        max_fraction: float = 1.0,
        batch_size: int = 256,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        store_model(self, "model", model)
        if steps < 1:
            raise ValueError(f"`steps` must be >= 1, got {steps}")
        if not 0.0 < max_fraction <= 1.0:
            raise ValueError(f"`max_fraction` must be in (0, 1], got {max_fraction}")
        if batch_size < 1:
            raise ValueError(f"`batch_size` must be >= 1, got {batch_size}")
        self.steps = steps
        self.baseline = float(baseline)
        self.max_fraction = max_fraction
        self.batch_size = batch_size
        self.add_state("curve_sum", default=torch.zeros(steps + 1, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, inputs: Tensor, explanations: Tensor, target: Tensor | int | None = None) -> None:
        """Add a batch.

        Args:
            inputs: (B, C, *S) or (B, D) inputs.
            explanations: (B, *S), (B, 1, *S) or (B, C, *S) importances (channels are averaged);
                (B, D) for (B, D) inputs. Higher means more important.
            target: (B,) classes explained; None: the prediction on the clean inputs (binary: ``f``).
        """
        importance = feature_scores(inputs, explanations).to(inputs.device)
        batch, features = importance.shape
        inputs = inputs.detach()
        target = resolve_target(self.model, inputs, target)
        # rank[b, n] = position of feature n in sample b's order of decreasing importance
        rank = importance.argsort(dim=1, descending=True).argsort(dim=1)
        max_changed = int(features * self.max_fraction)
        counts = torch.linspace(0, max_changed, self.steps + 1, device=inputs.device).long()
        changed = rank[None, :, :] < counts[:, None, None]  # (steps + 1, B, N)
        if self.inserting:
            perturbed = replace_features(inputs, ~changed, self.baseline)
        else:
            perturbed = replace_features(inputs, changed, self.baseline)
        repeated = None if target is None else target.repeat(self.steps + 1)
        scores = batched_scores(self.model, perturbed.flatten(0, 1), repeated, self.batch_size)
        self.curve_sum += scores.view(self.steps + 1, batch).double().sum(dim=1)
        self.count += batch

    def curve(self) -> Tensor:
        """(steps + 1,) mean score after removing (inserting) 0, 1/steps, ..., 1 of the features."""
        return (self.curve_sum / self.count.clamp_min(1)).float()

    def compute(self) -> Tensor:
        curve = self.curve()
        return ((curve[:-1] + curve[1:]) / 2).mean()
