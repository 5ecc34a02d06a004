"""An ImageNet-scale 1-Lipschitz residual network."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from lightning_ot.nn import (
    GlobalL2NormPool2d,
    InvertibleDownsampling,
    LipschitzResidual,
    MaxMin,
    Normalize,
    OrthogonalConv2d,
    OrthogonalLinear,
)

__all__ = ["LipschitzResNet"]

#: ``width_multiplier`` values of the two sizes of the paper: about 25M and 50M weights.
RESNET_WIDTHS = {"standard": 1.0, "wide": 1.41}


def _even_width(width: float) -> int:
    return max(8, round(width / 8) * 8)


class LipschitzResNet(nn.Module):
    """ResNet-style 1-Lipschitz network for ImageNet-size inputs (224x224).

    Stem: 4x4 space-to-depth (invertible) and an orthogonal 3x3 convolution. Four stages of
    ``stage_blocks`` residual blocks ``MaxMin(LipschitzResidual(conv3x3 -> MaxMin -> conv3x3))`` with
    orthogonal convolutions; between stages a 2x2 space-to-depth and an orthogonal 1x1 convolution
    (4C -> C'). Head: global L2-norm pooling and an orthogonal linear layer. Every layer is
    1-Lipschitz, so the network is (times the optional input normalization's factor).

    Sizes (weights of the equivalent plain network, see :func:`~lightning_ot.nn.vanilla_export`;
    the trainable orthogonal factors of a 3x3 kernel hold 3C^2 values instead of 9C^2):
    ``width_multiplier=1.0`` about 25M (the paper's ResNet50-like network), ``1.41`` about 50M (the
    wide one), see ``RESNET_WIDTHS``.

    Args:
        in_channels: image channels.
        num_outputs: number of classes (or 1 for binary hKR).
        width_multiplier: scales ``stage_widths`` (rounded to multiples of 8).
        stage_blocks: residual blocks per stage.
        stage_widths: channels per stage before the multiplier.
        normalize_mean, normalize_std: optional per-channel input normalization.
        iterations: Björck steps in each orthogonal layer.

    Shape:
        - input: (B, in_channels, H, W) with H and W divisible by 32
        - output: (B, num_outputs)

    Example:
        >>> model = LipschitzResNet(3, 10, width_multiplier=0.125, stage_blocks=(1, 1, 1, 1))
        >>> model(torch.rand(1, 3, 64, 64)).shape
        torch.Size([1, 10])
    """

    lipschitz_composition = "sequential"

    def __init__(
        self,
        in_channels: int = 3,
        num_outputs: int = 1000,
        width_multiplier: float = 1.0,
        stage_blocks: Sequence[int] = (3, 4, 6, 3),
        stage_widths: Sequence[int] = (64, 128, 256, 512),
        normalize_mean: Sequence[float] | None = None,
        normalize_std: Sequence[float] | None = None,
        iterations: int = 12,
    ) -> None:
        super().__init__()
        if width_multiplier <= 0:
            raise ValueError(f"`width_multiplier` must be positive, got {width_multiplier}")
        if len(stage_blocks) != len(stage_widths) or not stage_blocks:
            raise ValueError(
                f"`stage_blocks` and `stage_widths` need one entry per stage, got {list(stage_blocks)} "
                f"and {list(stage_widths)}"
            )
        widths = [_even_width(width * width_multiplier) for width in stage_widths]
        layers: list[nn.Module] = []
        if normalize_mean is not None or normalize_std is not None:
            if normalize_mean is None or normalize_std is None:
                raise ValueError("give both `normalize_mean` and `normalize_std`, or neither")
            layers.append(Normalize(normalize_mean, normalize_std))
        layers += [
            InvertibleDownsampling(4),
            OrthogonalConv2d(in_channels * 16, widths[0], 3, iterations=iterations),
            MaxMin(),
        ]
        for stage, (blocks, width) in enumerate(zip(stage_blocks, widths, strict=True)):
            if stage > 0:
                layers += [
                    InvertibleDownsampling(2),
                    OrthogonalConv2d(4 * widths[stage - 1], width, 1, iterations=iterations),
                ]
            for _ in range(blocks):
                branch = nn.Sequential(
                    OrthogonalConv2d(width, width, 3, iterations=iterations),
                    MaxMin(),
                    OrthogonalConv2d(width, width, 3, iterations=iterations),
                )
                layers += [LipschitzResidual(branch), MaxMin()]
        layers += [GlobalL2NormPool2d(), OrthogonalLinear(widths[-1], num_outputs, iterations=iterations)]
        self.widths = widths
        self.layers = nn.Sequential(*layers)

    def forward(self, input: Tensor) -> Tensor:
        return self.layers(input)
