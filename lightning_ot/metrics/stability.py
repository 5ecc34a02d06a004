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
Noise = Literal["two_sided", "xplique"]


class AverageStability(Metric):
    """AverageStability (Bhatt et al., *Evaluating and Aggregating Feature-based Model Explanations*,
    2020, def. 2): the mean distance between the explanation of an input and the explanations of
    ``num_samples`` neighbours ``x + u``. **Lower is better**.

    The neighbourhood (``noise``):

    - ``"two_sided"`` (this project's law, the default): ``u ~ U[-radius, radius]`` per value, drawn
      afresh for every input: a uniform sample of the L-infinity ball of radius ``radius`` around
      each input, as in Bhatt et al.;
    - ``"xplique"`` (Xplique's law, from version 0.4.3 to 2.0 at least): ``u ~ U[0, radius)`` per
      value (one-sided: neighbours are never darker), ``num_samples`` noise tensors drawn once and
      shared by every input of every batch. (Xplique before 0.4.3 drew ``U[0, 1/d)``, ``d`` the
      input size.)

    The distance between the flattened explanations (``distance``): ``"l2"`` the L2 norm (Xplique's
    ``"l2"`` since 1.3.1; before, its ``"l2"`` was the squared norm, here ``"squared_l2"``), ``"l1"``,
    or ``"spearman"``: ``1 - rho`` with ``rho`` the Spearman rank correlation, the scale-free distance
    of Serrurier et al. (2023). Defaults: 20 neighbours, radius 0.1, L2, as Xplique's.

    The explainer is called once on the inputs (unless their explanations are given) and once on all
    their neighbours, in chunks of ``batch_size`` neighbours.

    Args:
        explainer: ``explainer(inputs, target) -> explanations``, e.g.
            ``functools.partial(lightning_ot.explain.saliency, model)``.
        num_samples: neighbours per input.
        radius: half-width of the two-sided noise, width of Xplique's one-sided noise.
        distance: ``"l2"``, ``"l1"``, ``"squared_l2"`` or ``"spearman"``.
        noise: ``"two_sided"`` or ``"xplique"``, see above.
        batch_size: neighbours per explainer call.
        seed: seed of the noise (:meth:`reseed` restarts the draws), None for torch's global
            generator.

    Shape:
        - update: ``inputs`` (B, ...); optional ``target`` (B,) passed to the explainer (None lets the
          explainer choose, e.g. the predicted class of each neighbour); optional ``explanations``
          (B, ...) of the inputs, already computed
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
        noise: Noise = "two_sided",
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
        if noise not in ("two_sided", "xplique"):
            raise ValueError(f"`noise` must be 'two_sided' or 'xplique', got {noise!r}")
        if batch_size < 1:
            raise ValueError(f"`batch_size` must be >= 1, got {batch_size}")
        self.noise = noise
        self.num_samples = num_samples
        self.radius = radius
        self.distance = distance
        self.batch_size = batch_size
        self.seed = seed
        self._generator = None if seed is None else torch.Generator().manual_seed(seed)
        self._shared_noise: Tensor | None = None  # Xplique's: drawn once, for every input
        self.add_state("distance_sum", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def reseed(self) -> None:
        """Restart the random draws from ``seed`` (nothing without one): after ``reset()``, the same
        values again for the same inputs."""
        if self._generator is not None:
            self._generator.manual_seed(self.seed)

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

    def _noise(self, inputs: Tensor) -> Tensor:
        """(B, S, ...) perturbations of (B, ...) inputs."""
        batch, shape = inputs.shape[0], tuple(inputs.shape[1:])
        if self.noise == "two_sided":
            uniform = torch.rand((batch, self.num_samples, *shape), generator=self._generator)
            return (2 * uniform.to(inputs) - 1) * self.radius
        if self._shared_noise is None or tuple(self._shared_noise.shape[1:]) != shape:
            self._shared_noise = (
                torch.rand((self.num_samples, *shape), generator=self._generator) * self.radius
            )
        return self._shared_noise.to(inputs)[None].expand(batch, *self._shared_noise.shape)

    def update(
        self, inputs: Tensor, target: Tensor | int | None = None, explanations: Tensor | None = None
    ) -> None:
        """Add a batch of (B, ...) inputs (optional (B,) explained classes, and the inputs' (B, ...)
        explanations when they are already computed)."""
        if not isinstance(inputs, Tensor) or inputs.ndim < 2:
            raise ValueError("`inputs` must be a (B, ...) tensor")
        inputs = inputs.detach()
        batch = inputs.shape[0]
        if target is not None:
            target = torch.as_tensor(target, device=inputs.device).long().reshape(-1).expand(batch)
        if explanations is None:
            explanations = self.explainer(inputs, target)
        elif explanations.shape[0] != batch:
            raise ValueError(f"`explanations` has {explanations.shape[0]} samples for {batch} inputs")
        reference = explanations.detach().flatten(1).float()
        neighbours = (inputs[:, None] + self._noise(inputs)).flatten(0, 1)
        repeated = None if target is None else target.repeat_interleave(self.num_samples)
        chunks = []
        for start in range(0, neighbours.shape[0], self.batch_size):
            chunk_target = None if repeated is None else repeated[start : start + self.batch_size]
            chunks.append(self.explainer(neighbours[start : start + self.batch_size], chunk_target).detach())
        others = torch.cat(chunks).flatten(1).float().view(batch, self.num_samples, -1)
        self.distance_sum += self._distances(reference, others).double().mean(dim=1).sum()
        self.count += batch

    def compute(self) -> Tensor:
        return (self.distance_sum / self.count.clamp_min(1)).float()
