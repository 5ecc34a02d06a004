"""Certified robustness and explanation-quality metrics (torchmetrics), usable without Lightning."""

from lightning_ot.metrics.certification import CertifiedRobustAccuracy, certified_radius, predicted_labels
from lightning_ot.metrics.deletion import Deletion
from lightning_ot.metrics.insertion import Insertion
from lightning_ot.metrics.mu_fidelity import MuFidelity
from lightning_ot.metrics.sparseness import Sparseness
from lightning_ot.metrics.stability import AverageStability

__all__ = [
    "AverageStability",
    "CertifiedRobustAccuracy",
    "Deletion",
    "Insertion",
    "MuFidelity",
    "Sparseness",
    "certified_radius",
    "predicted_labels",
]
