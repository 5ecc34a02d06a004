"""1-Lipschitz backbones, constructible from YAML (``class_path: lightning_ot.models.LipschitzMLP``)."""

from lightning_ot.models.convnet import LipschitzConvNet
from lightning_ot.models.mlp import LipschitzMLP
from lightning_ot.models.norm_preserving import NormPreservingConvNet
from lightning_ot.models.resnet import RESNET_WIDTHS, LipschitzResNet
from lightning_ot.models.twin import unconstrained_twin

__all__ = [
    "RESNET_WIDTHS",
    "LipschitzConvNet",
    "LipschitzMLP",
    "LipschitzResNet",
    "NormPreservingConvNet",
    "unconstrained_twin",
]
