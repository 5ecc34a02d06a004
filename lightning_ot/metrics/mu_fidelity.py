"""MuFidelity: correlation between the attribution of random feature subsets and the score drop
when they are removed."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric

from lightning_ot.metrics._xai import (
    Model,
    batched_scores,
    feature_scores,
    replace_features,
    resolve_target,
    spearman,
    store_model,
)

__all__ = ["MuFidelity"]


class MuFidelity(Metric):
    """MuFidelity (Bhatt et al., *Evaluating and Aggregating Feature-based Model Explanations*, 2020,
    def. 3), with Xplique's definition and defaults.

    For each input, ``num_samples`` random subsets are drawn: the input's spatial extent is cut in a
    ``grid_size`` x ``grid_size`` grid (one cell per side and spatial dimension; (B, D) inputs use
    single values) and each cell is removed independently with probability ``subset_fraction``
    (mask upsampled to the input's size by nearest neighbour). Removed features are set to
    ``baseline``. The metric is the Spearman rank correlation, per input, between the sum of the
    explanation over the removed features and the drop of the explained score (the logit, see
    :func:`~lightning_ot.explain.class_score`) ``score(x) - score(x_removed)``, averaged over inputs
    (0 for an input whose scores or attributions do not vary). **Higher is better**, in [-1, 1].

    Args:
        model: maps (B, ...) inputs to (B, 1) or (B, C) logits.
        grid_size: cells per spatial side (Xplique: 9).
        subset_fraction: probability of removing each cell (Xplique: 0.2).
        num_samples: random subsets per input (Xplique: 200).
        baseline: value of removed features (Xplique: 0).
        batch_size: perturbed inputs per forward pass.
        seed: seed of the random subsets (reproducible values; :meth:`reseed` restarts
            them), None for torch's global generator.

    Shape:
        - update: ``inputs`` (B, C, *S) or (B, D); ``explanations`` (B, *S), (B, 1, *S) or (B, C, *S)
          (channels averaged), or (B, D); optional ``target`` (B,)
        - compute: scalar

    Example:
        >>> model = torch.nn.Linear(16, 1)
        >>> metric = MuFidelity(model, num_samples=50, seed=0)
        >>> x = torch.rand(2, 16)
        >>> metric.update(x, explanations=x * model.weight)  # exact attribution of a linear model
        >>> metric.compute()
        tensor(1.)
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    correlation_sum: Tensor
    count: Tensor

    def __init__(
        self,
        model: Model,
        grid_size: int = 9,
        subset_fraction: float = 0.2,
        num_samples: int = 200,
        baseline: float = 0.0,
        batch_size: int = 256,
        seed: int | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        store_model(self, "model", model)
        if grid_size < 1:
            raise ValueError(f"`grid_size` must be >= 1, got {grid_size}")
        if not 0.0 < subset_fraction < 1.0:
            raise ValueError(f"`subset_fraction` must be in (0, 1), got {subset_fraction}")
        if num_samples < 2:
            raise ValueError(f"`num_samples` must be >= 2 to compute a correlation, got {num_samples}")
        if batch_size < 1:
            raise ValueError(f"`batch_size` must be >= 1, got {batch_size}")
        self.grid_size = grid_size
        self.subset_fraction = subset_fraction
        self.num_samples = num_samples
        self.baseline = float(baseline)
        self.batch_size = batch_size
        self.seed = seed
        self._generator = None if seed is None else torch.Generator().manual_seed(seed)
        self.add_state(
            "correlation_sum", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum"
        )
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def reseed(self) -> None:
        """Restart the random draws from ``seed`` (nothing without one): after ``reset()``, the same
        values again for the same inputs."""
        if self._generator is not None:
            self._generator.manual_seed(self.seed)

    def _random_masks(self, inputs: Tensor) -> Tensor:
        """(num_samples, B, N) True where a feature is removed."""
        batch = inputs.shape[0]
        if inputs.ndim == 2:
            shape: tuple[int, ...] = (self.num_samples * batch, inputs.shape[1])
        else:
            shape = (self.num_samples * batch, 1) + (self.grid_size,) * (inputs.ndim - 2)
        cells = (torch.rand(shape, generator=self._generator) < self.subset_fraction).float()
        if inputs.ndim > 2:
            cells = F.interpolate(cells, size=inputs.shape[2:], mode="nearest")
        return cells.reshape(self.num_samples, batch, -1).to(inputs.device).bool()

    def update(self, inputs: Tensor, explanations: Tensor, target: Tensor | int | None = None) -> None:
        """Add a batch.

        Args:
            inputs: (B, C, *S) or (B, D) inputs.
            explanations: (B, *S), (B, 1, *S) or (B, C, *S) attributions (channels averaged); (B, D)
                for (B, D) inputs.
            target: (B,) classes explained; None: the prediction on the clean inputs (binary: ``f``).
        """
        importance = feature_scores(inputs, explanations).to(inputs.device)
        inputs = inputs.detach()
        batch = inputs.shape[0]
        target = resolve_target(self.model, inputs, target)
        base = batched_scores(self.model, inputs, target, self.batch_size)
        removed = self._random_masks(inputs)  # (num_samples, B, N)
        perturbed = replace_features(inputs, removed, self.baseline).flatten(0, 1)
        repeated = None if target is None else target.repeat(self.num_samples)
        scores = batched_scores(self.model, perturbed, repeated, self.batch_size).view(
            self.num_samples, batch
        )
        drops = (base[None, :] - scores).T  # (B, num_samples)
        attributions = (removed * importance[None]).sum(dim=2).T  # (B, num_samples)
        self.correlation_sum += spearman(attributions, drops).double().sum()
        self.count += batch

    def compute(self) -> Tensor:
        return (self.correlation_sum / self.count.clamp_min(1)).float()
