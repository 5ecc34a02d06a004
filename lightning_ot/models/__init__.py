"""1-Lipschitz backbones, constructible from YAML (``class_path: lightning_ot.models.LipschitzMLP``)."""

from lightning_ot.models.mlp import LipschitzMLP

__all__ = ["LipschitzMLP"]
