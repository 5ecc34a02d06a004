"""Deletion: how fast the score drops when the most important features are removed first."""

from __future__ import annotations

from lightning_ot.metrics._causal import CausalFidelity

__all__ = ["Deletion"]


class Deletion(CausalFidelity):
    """Deletion metric (Petsiuk et al., *RISE*, 2018), with Xplique's definition and defaults.

    Features are sorted by decreasing explanation value; at step ``s = 0 .. steps`` the first
    ``floor(s / steps * max_fraction * N)`` of them are set to ``baseline`` (a feature is a spatial
    position with all its channels, or one value of a (B, D) input), and the model's score for the
    explained class (its logit, see :func:`~lightning_ot.explain.class_score`) is recorded. The metric
    is the area under the mean score curve over [0, 1] by the trapezoidal rule. **Lower is better**: a
    faithful explanation removes the evidence first.

    Args:
        model: maps (B, ...) inputs to (B, 1) or (B, C) logits.
        steps: points of the curve after the first (Xplique: 10).
        baseline: value of removed features (Xplique: 0).
        max_fraction: fraction of the features removed at the last step (Xplique: 1).
        batch_size: perturbed inputs per forward pass.

    Shape:
        - update: ``inputs`` (B, C, *S) or (B, D); ``explanations`` (B, *S), (B, 1, *S) or (B, C, *S)
          (channels averaged), or (B, D); optional ``target`` (B,)
        - compute: scalar

    Example:
        >>> import torch
        >>> model = torch.nn.Linear(4, 1)
        >>> with torch.no_grad():
        ...     _ = model.weight.copy_(torch.tensor([[4.0, 3.0, 2.0, 1.0]])), model.bias.zero_()
        >>> metric = Deletion(model, steps=4)
        >>> metric.update(torch.ones(1, 4), explanations=torch.tensor([[4.0, 3.0, 2.0, 1.0]]))
        >>> metric.curve(), metric.compute()
        (tensor([10.,  6.,  3.,  1.,  0.]), tensor(3.7500))
    """

    higher_is_better = False
    inserting = False
