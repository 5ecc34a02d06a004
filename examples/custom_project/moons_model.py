"""The user's own backbone and a subclass of ``OTClassifier`` that changes what is logged."""

from __future__ import annotations

from torch import Tensor, nn

from lightning_ot import OTClassifier
from lightning_ot.nn import GroupSort, OrthogonalLinear


class MoonsBackbone(nn.Module):
    """A 1-Lipschitz network for 2-D points: orthogonal linear layers and GroupSort activations.

    Every layer is 1-Lipschitz and norm-preserving, so the network is 1-Lipschitz and ``OTClassifier``
    needs no ``lipschitz=`` argument.

    Shape:
        - input: (B, 2)
        - output: (B, 1)
    """

    def __init__(self, width: int = 64, depth: int = 3, group_size: int = 4) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_features = 2
        for _ in range(depth):
            layers += [OrthogonalLinear(in_features, width), GroupSort(group_size)]
            in_features = width
        layers.append(OrthogonalLinear(in_features, 1))
        self.layers = nn.Sequential(*layers)

    def forward(self, input: Tensor) -> Tensor:
        return self.layers(input)


class MoonsClassifier(OTClassifier):
    """``OTClassifier`` that also logs the fraction of samples inside the hinge margin.

    ``compute_loss`` returns the quantity to minimize under ``"loss"``; every other entry is logged as
    ``train/NAME`` and ``val/NAME`` next to it.
    """

    def compute_loss(self, logits: Tensor, target: Tensor) -> dict[str, Tensor]:
        terms = super().compute_loss(logits, target)
        signs = 2.0 * target.reshape(-1).float() - 1.0
        terms["inside_margin"] = (signs * logits.reshape(-1) < self.loss.margin).float().mean()
        return terms
