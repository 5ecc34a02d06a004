"""AverageStability: how much an explanation changes when the input is slightly perturbed."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor
from torchmetrics import Metric

from lightning_ot.metrics._xai import spearman, store_model

__all__ = ["AverageStability"]

Explainer = Callable[[Tensor, Tensor | None], Tensor]
Distance = Literal["l2", "l1", "squared_l2", "spearman"]


class AverageStability(Metric):
    """AverageStability (Bhatt et al., *Evaluating and Aggregating Feature-based Model Explanations*,
    2020, def. 2): the mean distance between the explanation of an input and the explanations of
    ``num_samples`` neighbours drawn uniformly in the L-infinity ball of radius ``radius``
    (``x + u``, ``u ~ U[-radius, radius]`` per value). **Lower is better**.

    Defaults follow the project's reading of Xplique: 20 neighbours, radius 0.1, L2 distance between
    the flattened explanations. (Xplique's own code draws ``u ~ U[0, 1/d)`` and uses the squared L2
    distance: ``distance="squared_l2"`` gives the latter.) ``"spearman"`` is ``1 - rho`` with ``rho``
    the Spearman rank correlation, the scale-free distance of Serrurier et al. (2023).

    The explainer is called once on the inputs and once on all their neighbours, in chunks of
    ``batch_size`` neighbours.

    Args:
        explainer: ``explainer(inputs, target) -> explanations``, e.g.
            ``functools.partial(lightning_ot.explain.saliency, model)``.
        num_samples: neighbours per input.
        radius: half-width of the uniform noise.
        distance: ``"l2"``, ``"l1"``, ``"squared_l2"`` or ``"spearman"``.
        batch_size: neighbours per explainer call.
        seed: seed of the noise, None for torch's global generator.

    Shape:
        - update: ``inputs`` (B, ...); optional ``target`` (B,) passed to the explainer (None lets the
          explainer choose, e.g. the predicted class of each neighbour)
        - compute: scalar

    Example:
        >>> from functools import partial
        >>> from lightning_ot.explain import saliency
        >>> model = torch.nn.Linear(3, 1)
        >>> metric = AverageStability(partial(saliency, model), num_samples=4)
        >>> metric.update(torch.rand(5, 3))
        >>> metric.compute()  # the gradient of a linear model is constant
        tensor(0.)
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    distance_sum: Tensor
    count: Tensor

    def __init__(
        self,
        explainer: Explainer,
        num_samples: int = 20,
        radius: float = 0.1,
        distance: Distance = "l2",
        batch_size: int = 256,
        seed: int | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        store_model(self, "explainer", explainer)
        if num_samples < 1:
            raise ValueError(f"`num_samples` must be >= 1, got {num_samples}")
        if radius < 0:
            raise ValueError(f"`radius` must be >= 0, got {radius}")
        if distance not in ("l2", "l1", "squared_l2", "spearman"):
            raise ValueError(f"`distance` must be 'l2', 'l1', 'squared_l2' or 'spearman', got {distance!r}")
        if batch_size < 1:
            raise ValueError(f"`batch_size` must be >= 1, got {batch_size}")
        self.num_samples = num_samples
        self.radius = radius
        self.distance = distance
        self.batch_size = batch_size
        self.seed = seed
        self._generator = None if seed is None else torch.Generator().manual_seed(seed)
        self.add_state("distance_sum", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def _distances(self, reference: Tensor, others: Tensor) -> Tensor:
        """(B, S) distances between (B, N) reference explanations and (B, S, N) neighbours'."""
        if self.distance == "spearman":
            expanded = reference[:, None].expand_as(others).flatten(0, 1)
            return (1.0 - spearman(expanded, others.flatten(0, 1))).view(others.shape[:2])
        difference = others - reference[:, None]
        if self.distance == "l1":
            return difference.abs().sum(dim=2)
        squared = difference.pow(2).sum(dim=2)
        return squared if self.distance == "squared_l2" else squared.sqrt()

    def update(self, inputs: Tensor, target: Tensor | int | None = None) -> None:
        """Add a batch of (B, ...) inputs (and optional (B,) explained classes)."""
        if not isinstance(inputs, Tensor) or inputs.ndim < 2:
            raise ValueError("`inputs` must be a (B, ...) tensor")
        inputs = inputs.detach()
        batch = inputs.shape[0]
        if target is not None:
            target = torch.as_tensor(target, device=inputs.device).long().reshape(-1).expand(batch)
        reference = self.explainer(inputs, target).detach().flatten(1).float()
        noise = torch.rand((batch, self.num_samples, *inputs.shape[1:]), generator=self._generator)
        neighbours = (inputs[:, None] + (2 * noise.to(inputs) - 1) * self.radius).flatten(0, 1)
        repeated = None if target is None else target.repeat_interleave(self.num_samples)
        explanations = []
        for start in range(0, neighbours.shape[0], self.batch_size):
            chunk_target = None if repeated is None else repeated[start : start + self.batch_size]
            explanations.append(
                self.explainer(neighbours[start : start + self.batch_size], chunk_target).detach()
            )
        others = torch.cat(explanations).flatten(1).float().view(batch, self.num_samples, -1)
        self.distance_sum += self._distances(reference, others).double().mean(dim=1).sum()
        self.count += batch

    def compute(self) -> Tensor:
        return (self.distance_sum / self.count.clamp_min(1)).float()
