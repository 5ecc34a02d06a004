"""Lightning callbacks: per-epoch explanations of the network being trained."""

from lightning_ot.callbacks.explanation import ExplanationCallback

__all__ = ["ExplanationCallback"]
