"""Certified robustness (and, later, explanation quality) metrics, usable without Lightning."""

from lightning_ot.metrics.certification import CertifiedRobustAccuracy, certified_radius, predicted_labels

__all__ = ["CertifiedRobustAccuracy", "certified_radius", "predicted_labels"]
