"""Everything the project says about a prediction, computed once: class, margin, certified radius,
saliency, gradient norms, transports and the boundary counterfactual (Serrurier et al., NeurIPS 2023).

The explain command, :class:`~lightning_ot.callbacks.ExplanationCallback` and
:mod:`lightning_ot.reproduce` all call :func:`explain`, so that a fix or a new figure lands in all
three at once.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace
from typing import Literal

import torch
from torch import Tensor

from lightning_ot.explain._common import Model, check_input, explanation_mode, is_binary
from lightning_ot.explain.counterfactual import (
    _check_transport_options,
    _PairMargin,
    _predict,
    _resolve_classes,
    _transport,
)

__all__ = ["BoundarySearch", "Certificate", "Explanation", "explain"]

BoundarySearch = Literal["newton", "nearest"]
"""How :func:`explain` finds the boundary counterfactual: Newton steps along the gradient, or the
nearest boundary point found from where they land."""

Certificate = Callable[[Tensor], Tensor] | float
"""A certificate: a callable mapping (B, C) logits to (B,) certified L2 radii (e.g.
``OTClassifier.certified_radius``), or the network's Lipschitz constant ``L``."""


@dataclass(frozen=True)
class Explanation:
    """The explanation of a batch of ``B`` inputs, ``T`` step transports each; all tensors batched.

    With ``k`` the predicted class, ``j`` the class transported to and ``g = f_k - f_j`` (binary:
    ``g = f`` when 1 is predicted, ``-f`` otherwise):

    Attributes:
        inputs: (B, ...) the inputs explained.
        logits: (B, C) or (B, 1) the network's outputs.
        prediction: (B,) predicted class ``k``.
        target: (B,) class ``j`` transported to: the runner-up (binary: the other class) unless asked.
        margin: (B,) ``g(x) = f_k(x) - f_j(x)`` (binary: ``|f(x)|``).
        certified_radius: (B,) certified L2 radius of the prediction.
        saliency: (B, ...) ``grad f_k(x)``, signed (binary: ``grad f``).
        gradient_norm: (B,) ``||grad f_k(x)||`` (binary: ``||grad f||``; 1 for a tight network).
        pair_gradient_norm: (B,) ``||grad g(x)||`` (at most ``sqrt(2) L`` for multiclass).
        step_sizes: the ``T`` transports' distances as multiples of ``t_b = g / ||grad g||``.
        transports: (B, T, ...) ``x - t grad g / ||grad g||`` for ``t`` in ``step_sizes`` times ``t_b``.
        transport_flipped: (B, T) whether each transport's predicted class differs from ``k``.
        counterfactual: (B, ...) the boundary counterfactual: Newton steps on ``g`` from ``x`` until
            ``|g| <= tolerance`` (or ``max_iterations``), or with ``boundary_search="nearest"`` the
            nearest boundary point found from there (``"nearest"`` mode of
            :func:`~lightning_ot.explain.counterfactual`).
        boundary_distance: (B,) ``||counterfactual - x||``.
        flipped: (B,) whether the counterfactual's predicted class differs from ``k``.
        on_boundary: (B,) whether ``|g(counterfactual)| <= tolerance``.
        tightness: (B,) ``boundary_distance / certified_radius`` (>= 1 for a valid certificate, 1 for a
            tight one); NaN where the walk neither reached the boundary nor flipped, or the radius is 0.
    """

    inputs: Tensor
    logits: Tensor
    prediction: Tensor
    target: Tensor
    margin: Tensor
    certified_radius: Tensor
    saliency: Tensor
    gradient_norm: Tensor
    pair_gradient_norm: Tensor
    step_sizes: tuple[float, ...]
    transports: Tensor
    transport_flipped: Tensor
    counterfactual: Tensor
    boundary_distance: Tensor
    flipped: Tensor
    on_boundary: Tensor
    tightness: Tensor

    def __len__(self) -> int:
        return self.prediction.shape[0]

    @property
    def reached_boundary(self) -> Tensor:
        """(B,) whether the boundary counterfactual landed on the boundary or crossed it."""
        return self.flipped | self.on_boundary

    def __getitem__(self, index: int | slice | Tensor) -> Explanation:
        """The explanation of a subset of the samples (``index`` selects along the batch)."""
        if isinstance(index, int):
            index = slice(index, index + 1 if index != -1 else None)
        values = {
            item.name: getattr(self, item.name)[index] for item in fields(self) if item.name != "step_sizes"
        }
        return replace(self, **values)

    def to(self, device: torch.device | str) -> Explanation:
        """The same explanation with every tensor on ``device``."""
        values = {
            item.name: getattr(self, item.name).to(device)
            for item in fields(self)
            if isinstance(getattr(self, item.name), Tensor)
        }
        return replace(self, **values)

    def summary(self) -> dict[str, float]:
        """Figures over the batch (medians and quantiles interpolate between samples):

        - ``gradient_norm``, ``gradient_norm_p10``: median and 10th percentile of ``||grad f_k||``;
        - ``pair_gradient_norm``: median of ``||grad (f_k - f_j)||``;
        - ``tightness``: median of ``boundary_distance / certified_radius`` over the samples where it
          is defined (NaN if none);
        - ``boundary_reached``: fraction of boundary counterfactuals on the boundary or past it;
        - ``flip_rate``: fraction of transports at the largest step size that changed the class;
        - ``flip_rate@{t}`` for each step size ``t`` (e.g. ``flip_rate@1.1``): the same at ``t``. For
          a tight network, ``t = 1`` is the certified radius and cannot flip; how fast the rate
          rises after it says how straight the gradient lines run to the boundary.

        Example:
            >>> summary = explain(torch.nn.Linear(3, 2), torch.rand(4, 3), step_sizes=(1.0, 1.1)).summary()
            >>> sorted(summary)[:4]
            ['boundary_reached', 'flip_rate', 'flip_rate@1', 'flip_rate@1.1']
        """
        gradient_norm = self.gradient_norm.double()
        tightness = self.tightness.double()
        return {
            "gradient_norm": float(gradient_norm.quantile(0.5)),
            "gradient_norm_p10": float(gradient_norm.quantile(0.1)),
            "pair_gradient_norm": float(self.pair_gradient_norm.double().quantile(0.5)),
            "tightness": float(tightness.nanquantile(0.5)) if bool(tightness.isfinite().any()) else math.nan,
            "boundary_reached": float(self.reached_boundary.double().mean()),
            "flip_rate": float(self.transport_flipped[:, -1].double().mean()),
        } | {
            f"flip_rate@{step:g}": float(self.transport_flipped[:, index].double().mean())
            for index, step in enumerate(self.step_sizes)
        }


def explain(
    model: Model,
    inputs: Tensor,
    certificate: Certificate = 1.0,
    *,
    output_lipschitz: Literal["joint", "per_output"] = "joint",
    target: Tensor | int | None = None,
    step_sizes: Sequence[float] = (0.5, 1.0, 2.0),
    clamp: tuple[float, float] | None = None,
    tolerance: float = 1e-3,
    max_iterations: int = 10,
    boundary_search: BoundarySearch = "newton",
    refinements: int = 20,
) -> Explanation:
    """Explain the predictions of ``model`` on ``inputs``: one forward pass and its backward passes
    give the prediction, the margin, the saliency ``grad f_k`` and the transport direction
    ``grad (f_k - f_j)``; the transports and the boundary counterfactual (see
    :func:`~lightning_ot.explain.counterfactual`) start from them.

    Args:
        model: maps (B, ...) inputs to (B, 1) binary or (B, C) logits; put it in eval mode.
        inputs: (B, ...) inputs.
        certificate: a callable ``logits -> (B,) radii`` (e.g. ``OTClassifier.certified_radius``), or
            the Lipschitz constant ``L`` of ``model``, then the radius is
            :func:`~lightning_ot.metrics.certified_radius` with ``output_lipschitz``.
        output_lipschitz: what ``L`` bounds (``"joint"``: the output vector; ``"per_output"``: each
            output), when ``certificate`` is a number.
        target: (B,) class indices or one int to transport to; None: the runner-up (binary: the
            other class). It must differ from each sample's predicted class.
        step_sizes: the transports computed, as multiples of the first-order boundary distance.
        clamp: ``(low, high)`` data range to clamp transports and counterfactuals to.
        tolerance: ``|g|`` below which the counterfactual is on the boundary.
        max_iterations: Newton steps of the boundary counterfactual at most.
        boundary_search: ``"newton"``: the boundary counterfactual is where Newton steps along the
            gradient land; ``"nearest"``: the nearest boundary point found from there (a minimal
            counterfactual, and a closer upper bound of the distance to the boundary, so a lower
            ``tightness``; up to ``3 * refinements`` more backward passes).
        refinements: rounds of the ``"nearest"`` search at most.

    Returns:
        An :class:`Explanation` (tensors on the inputs' device, detached).

    Example:
        >>> model = torch.nn.Linear(2, 1)
        >>> with torch.no_grad():
        ...     _ = model.weight.copy_(torch.tensor([[0.6, 0.8]])), model.bias.zero_()
        >>> result = explain(model, torch.tensor([[1.0, 1.0]]))
        >>> result.prediction, result.margin, result.certified_radius, result.tightness
        (tensor([1]), tensor([1.4000]), tensor([1.4000]), tensor([1.]))
    """
    check_input(inputs, "inputs")
    _check_transport_options("steps", step_sizes, tolerance, max_iterations, clamp, refinements)
    if boundary_search not in ("newton", "nearest"):
        raise ValueError(f"`boundary_search` must be 'newton' or 'nearest', got {boundary_search!r}")
    if not callable(certificate) and not (isinstance(certificate, int | float) and certificate > 0):
        raise ValueError(
            f"`certificate` must be a callable logits -> radii or a Lipschitz constant > 0, got {certificate!r}"
        )
    inputs = inputs.detach()
    batch_size = inputs.shape[0]
    with explanation_mode(model, inputs):
        point = inputs.clone().requires_grad_(True)
        logits = model(point)
        if logits.ndim not in (1, 2):
            raise ValueError(
                f"the model must return (B,), (B, 1) or (B, C) logits, got {tuple(logits.shape)}"
            )
        detached = logits.detach()
        binary = is_binary(detached)
        prediction = _predict(detached)
        source, target_t = _resolve_classes(detached, binary, prediction, target, batch_size, inputs.device)
        if binary:
            scores = logits.reshape(-1)
            (saliency,) = torch.autograd.grad(scores.sum(), point)
            sign = (2 * source - 1).to(saliency.dtype)
            pair_gradient = saliency * sign.view(-1, *([1] * (saliency.ndim - 1)))
            margin = scores.detach() * sign
        else:
            source_score = logits.gather(1, source[:, None]).squeeze(1)
            target_score = logits.gather(1, target_t[:, None]).squeeze(1)
            (saliency,) = torch.autograd.grad(source_score.sum(), point, retain_graph=True)
            (target_gradient,) = torch.autograd.grad(target_score.sum(), point)
            pair_gradient = saliency - target_gradient
            margin = (source_score - target_score).detach()
        pair_margin = _PairMargin(source, target_t, binary)
        first = (model, inputs, pair_margin, margin, pair_gradient)
        steps = _transport(*first, "steps", step_sizes, True, tolerance, max_iterations, clamp)
        mode = "boundary" if boundary_search == "newton" else "nearest"
        boundary = _transport(*first, mode, step_sizes, True, tolerance, max_iterations, clamp, refinements)

    if callable(certificate):
        radius = torch.as_tensor(certificate(detached)).detach().reshape(-1).to(inputs.device)
        if radius.shape[0] != batch_size:
            raise ValueError(f"the certificate returned {radius.shape[0]} radii for {batch_size} inputs")
    else:
        from lightning_ot.metrics.certification import certified_radius  # metrics import this package

        radius = certified_radius(detached, float(certificate), output_lipschitz)
    boundary_distance = boundary.distances[:, 0]
    reached = boundary.on_boundary[:, 0] | boundary.flipped[:, 0]
    tightness = torch.where(
        reached & (radius > 0),
        boundary_distance / radius.clamp_min(torch.finfo(radius.dtype).tiny),
        torch.nan,
    )
    return Explanation(
        inputs=inputs,
        logits=detached,
        prediction=prediction,
        target=target_t,
        margin=margin,
        certified_radius=radius,
        saliency=saliency.detach(),
        gradient_norm=saliency.detach().flatten(1).norm(dim=1),
        pair_gradient_norm=steps.gradient_norm,
        step_sizes=tuple(float(step) for step in step_sizes),
        transports=steps.images,
        transport_flipped=steps.flipped,
        counterfactual=boundary.images[:, 0],
        boundary_distance=boundary_distance,
        flipped=boundary.flipped[:, 0],
        on_boundary=boundary.on_boundary[:, 0],
        tightness=tightness,
    )
