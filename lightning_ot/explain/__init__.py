"""Explanations of 1-Lipschitz networks in plain PyTorch (no Lightning): saliency, counterfactual
transport, the SmoothGrad and Integrated Gradients baselines, and grids to look at them."""

from lightning_ot.explain._common import class_score, explanation_mode
from lightning_ot.explain.attribution import integrated_gradients, saliency, smoothgrad
from lightning_ot.explain.counterfactual import CounterfactualResult, counterfactual
from lightning_ot.explain.visualize import explanation_grid, to_uint8_image

__all__ = [
    "CounterfactualResult",
    "class_score",
    "counterfactual",
    "explanation_grid",
    "explanation_mode",
    "integrated_gradients",
    "saliency",
    "smoothgrad",
    "to_uint8_image",
]
