"""lightning-ot: optimal-transport neural networks for PyTorch Lightning.

``losses``, ``nn``, ``models``, ``metrics`` and ``explain`` are plain PyTorch; importing
``OTClassifier`` (or ``lightning_ot.fit``) brings in Lightning.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["OTClassifier", "__version__"]


def __getattr__(name: str) -> Any:
    # Lazy, so that `import lightning_ot.losses` in a plain PyTorch loop does not import Lightning.
    if name == "OTClassifier":
        from lightning_ot.module import OTClassifier

        return OTClassifier
    raise AttributeError(f"module 'lightning_ot' has no attribute {name!r}")
