"""An ImageNet-scale 1-Lipschitz residual network, and its gradient-norm-preserving plain variant."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
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

__all__ = ["LipschitzResNet", "PartitionedL2NormPool2d"]

#: ``width_multiplier`` values of the two sizes of the paper: about 25M and 50M weights.
RESNET_WIDTHS = {"standard": 1.0, "wide": 1.41}


def _even_width(width: float) -> int:
    return max(8, round(width / 8) * 8)


def _partitioned_l2_norms(input: Tensor, parts: int, eps: float) -> Tensor:
    if input.ndim != 4:
        raise ValueError(f"expected input of shape (B, C, H, W), got {tuple(input.shape)}")
    positions = input.shape[-2] * input.shape[-1]
    if positions < parts:
        raise ValueError(f"cannot split {positions} positions into {parts} parts: use larger inputs")
    groups = torch.tensor_split(input.flatten(2), parts, dim=-1)
    norms = torch.stack([group.square().sum(dim=-1) for group in groups], dim=-1)
    return (norms + eps).sqrt().flatten(1)


# one call in traced graphs (vanilla_export): the checks above need concrete shapes
torch.fx.wrap("_partitioned_l2_norms")


class PartitionedL2NormPool2d(nn.Module):
    """L2 norm of each channel over ``parts`` disjoint groups of positions: 1-Lipschitz, gradient-norm preserving.

    The ``H * W`` positions (in row-major order) are split into ``parts`` contiguous groups of nearly
    equal size (as ``torch.tensor_split``), and each channel gives one L2 norm per group. The groups
    are disjoint, so the Jacobian has orthonormal rows (a co-isometry: gradients keep their norm);
    ``parts=1`` is :class:`~lightning_ot.nn.GlobalL2NormPool2d`. It lets a head have more inputs than
    the last stage has channels (1000 classes from 512 channels x 2 parts) without widening anything.

    Args:
        parts: groups per channel (at most ``H * W``).
        eps: added under the square root (a finite gradient at zero).

    Shape:
        - input: (B, C, H, W)
        - output: (B, C * parts), channel by channel (the ``parts`` values of channel 0 first)

    Example:
        >>> pool = PartitionedL2NormPool2d(2)
        >>> pool(torch.tensor([[[[3.0, 4.0], [0.0, 2.0]]]]))
        tensor([[5., 2.]])
    """

    lipschitz_bound = 1.0

    def __init__(self, parts: int, eps: float = 1e-12) -> None:
        super().__init__()
        if int(parts) != parts or parts < 1:
            raise ValueError(f"`parts` must be a positive integer, got {parts}")
        self.parts = int(parts)
        self.eps = eps

    def forward(self, input: Tensor) -> Tensor:
        return _partitioned_l2_norms(input, self.parts, self.eps)

    def extra_repr(self) -> str:
        return f"parts={self.parts}"


class LipschitzResNet(nn.Module):
    """ResNet-style 1-Lipschitz network for ImageNet-size inputs (224x224).

    Stem: 4x4 space-to-depth (invertible) and an orthogonal 3x3 convolution. Four stages of
    ``stage_blocks`` residual blocks ``MaxMin(LipschitzResidual(conv3x3 -> MaxMin -> conv3x3))`` with
    orthogonal convolutions; between stages a 2x2 space-to-depth and an orthogonal 1x1 convolution
    (4C -> C'). Head: global L2-norm pooling and an orthogonal linear layer. Every layer is
    1-Lipschitz, so the network is (times the optional input normalization's factor).

    That network is not gradient-norm preserving: the residual mixing ``(1 - t) x + t branch(x)``
    shrinks a gradient by about ``sqrt((1 - t)^2 + t^2)`` per block (0.71 at ``t = 0.5``) when the
    branch is a random orthogonal map, the stem widens (48 -> 64 channels at 56x56), and a 512 -> 1000
    head cannot have orthonormal rows. ``norm_preserving=True`` builds the variant whose every layer
    preserves gradient norms (``||grad f_k|| = 1`` almost everywhere, by construction): plain blocks
    ``conv3x3 -> MaxMin -> conv3x3 -> MaxMin`` (no residual mixing) with circular padding (the
    convolutions are then orthogonal on the feature map, the border included), a stem that does not
    widen (the first stage has at most ``16 * in_channels`` channels), transitions that never widen
    (each stage at most 4x the previous one's channels) and, when the last stage has fewer channels
    than ``num_outputs``, a :class:`PartitionedL2NormPool2d` into enough features for a head with
    orthonormal rows (512 channels x 2 parts -> 1000 classes).

    Sizes (weights of the equivalent plain network, see :func:`~lightning_ot.nn.vanilla_export`;
    the trainable orthogonal factors of a 3x3 kernel hold 3C^2 values instead of 9C^2):
    ``width_multiplier=1.0`` about 25M (the paper's ResNet50-like network), ``1.41`` about 50M (the
    wide one), see ``RESNET_WIDTHS``.

    Args:
        in_channels: image channels.
        num_outputs: number of classes (or 1 for binary hKR).
        width_multiplier: scales ``stage_widths`` (rounded to multiples of 8).
        stage_blocks: residual blocks per stage (with ``norm_preserving``: pairs of convolutions).
        stage_widths: channels per stage before the multiplier.
        normalize_mean, normalize_std: optional per-channel input normalization.
        iterations: Björck steps in each orthogonal layer.
        norm_preserving: build the gradient-norm-preserving plain variant described above.
        padding_mode: of the 3x3 convolutions, ``"zeros"`` or ``"circular"``; default ``"circular"``
            with ``norm_preserving``, else ``"zeros"``.

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
        norm_preserving: bool = False,
        padding_mode: str | None = None,
    ) -> None:
        super().__init__()
        if in_channels < 1 or num_outputs < 1:
            raise ValueError(
                f"`in_channels` and `num_outputs` must be positive, got {in_channels} and {num_outputs}"
            )
        if width_multiplier <= 0:
            raise ValueError(f"`width_multiplier` must be positive, got {width_multiplier}")
        if len(stage_blocks) != len(stage_widths) or not stage_blocks:
            raise ValueError(
                f"`stage_blocks` and `stage_widths` need one entry per stage, got {list(stage_blocks)} "
                f"and {list(stage_widths)}"
            )
        if padding_mode is None:
            padding_mode = "circular" if norm_preserving else "zeros"
        if padding_mode not in ("zeros", "circular"):
            raise ValueError(f"`padding_mode` must be 'zeros' or 'circular', got {padding_mode!r}")
        widths = [_even_width(width * width_multiplier) for width in stage_widths]
        stem_channels = in_channels * 16
        if norm_preserving:
            widths[0] = min(widths[0], stem_channels - stem_channels % 2)
            for stage in range(1, len(widths)):
                if widths[stage] > 4 * widths[stage - 1]:
                    raise ValueError(
                        f"with `norm_preserving`, a stage may have at most 4x the channels of the one "
                        f"before (the 2x2 space-to-depth), got widths {widths}"
                    )
        # only the non-default padding is passed on, so that any OrthogonalConv2d builds the default
        padding = {} if padding_mode == "zeros" else {"padding_mode": padding_mode}
        conv_options = {"iterations": iterations, **padding}

        layers: list[nn.Module] = []
        if normalize_mean is not None or normalize_std is not None:
            if normalize_mean is None or normalize_std is None:
                raise ValueError("give both `normalize_mean` and `normalize_std`, or neither")
            layers.append(Normalize(normalize_mean, normalize_std))
        layers += [
            InvertibleDownsampling(4),
            OrthogonalConv2d(stem_channels, widths[0], 3, **conv_options),
            MaxMin(),
        ]
        for stage, (blocks, width) in enumerate(zip(stage_blocks, widths, strict=True)):
            if stage > 0:
                layers += [
                    InvertibleDownsampling(2),
                    OrthogonalConv2d(4 * widths[stage - 1], width, 1, iterations=iterations),
                ]
            for _ in range(blocks):
                first = OrthogonalConv2d(width, width, 3, **conv_options)
                second = OrthogonalConv2d(width, width, 3, **conv_options)
                if norm_preserving:
                    layers += [first, MaxMin(), second, MaxMin()]
                else:
                    layers += [LipschitzResidual(nn.Sequential(first, MaxMin(), second)), MaxMin()]
        parts = math.ceil(num_outputs / widths[-1]) if norm_preserving else 1
        pooling = PartitionedL2NormPool2d(parts) if parts > 1 else GlobalL2NormPool2d()
        layers += [pooling, OrthogonalLinear(widths[-1] * parts, num_outputs, iterations=iterations)]
        self.widths = widths
        self.norm_preserving = norm_preserving
        self.layers = nn.Sequential(*layers)

    def forward(self, input: Tensor) -> Tensor:
        return self.layers(input)
