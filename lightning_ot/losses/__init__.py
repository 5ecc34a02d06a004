"""The hinge-Kantorovich-Rubinstein loss family, in functional and ``nn.Module`` forms."""

from lightning_ot.losses import functional
from lightning_ot.losses.conversion import (
    HKRParameters,
    from_deel_lip,
    from_deel_torchlip,
    to_deel_lip,
    to_deel_torchlip,
)
from lightning_ot.losses.functional import HKRTerms
from lightning_ot.losses.modules import HingeMarginLoss, HKRLoss, KRLoss, SoftHKRLoss
from lightning_ot.losses.straightness import StraightnessPenalty, straightness_penalty

__all__ = [
    "HKRLoss",
    "HKRParameters",
    "HKRTerms",
    "HingeMarginLoss",
    "KRLoss",
    "SoftHKRLoss",
    "StraightnessPenalty",
    "from_deel_lip",
    "from_deel_torchlip",
    "functional",
    "straightness_penalty",
    "to_deel_lip",
    "to_deel_torchlip",
]
