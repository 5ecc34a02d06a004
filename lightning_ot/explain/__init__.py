"""Explanations of 1-Lipschitz networks in plain PyTorch (no Lightning): :func:`explain` (prediction,
margin, certificate, saliency, transports and boundary counterfactual in one pass), the building
blocks it uses, the SmoothGrad and Integrated Gradients baselines, and grids to look at them."""

from lightning_ot.explain._common import class_score, explanation_mode
from lightning_ot.explain.attribution import integrated_gradients, saliency, smoothgrad
from lightning_ot.explain.counterfactual import CounterfactualResult, counterfactual
from lightning_ot.explain.explanation import BoundarySearch, Certificate, Explanation, explain
from lightning_ot.explain.visualize import (
    caption_lines,
    encode_png,
    heatmap_panels,
    image_panels,
    render_explanation,
    render_grid,
)

__all__ = [
    "BoundarySearch",
    "Certificate",
    "CounterfactualResult",
    "Explanation",
    "caption_lines",
    "class_score",
    "counterfactual",
    "encode_png",
    "explain",
    "explanation_mode",
    "heatmap_panels",
    "image_panels",
    "integrated_gradients",
    "render_explanation",
    "render_grid",
    "saliency",
    "smoothgrad",
]
