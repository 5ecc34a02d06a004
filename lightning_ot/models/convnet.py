"""A VGG-style 1-Lipschitz ConvNet (the size used on FashionMNIST and CelebA in the OTNN papers)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from lightning_ot.nn import L2NormPool2d, MaxMin, Normalize, OrthogonalConv2d, OrthogonalLinear

__all__ = ["LipschitzConvNet"]


class LipschitzConvNet(nn.Module):
    """Orthogonal 3x3 convolutions with MaxMin, L2-norm pooling, then two orthogonal linear layers.

    1-Lipschitz in L2 (times the optional input normalization's factor) and gradient-norm preserving
    layer by layer. The default is the 5-conv + 2-linear network used on 28x28 FashionMNIST
    (``channels=(32, 32, 64, 64, 128)``, pooling after the 2nd, 4th and 5th conv: 28 -> 14 -> 7 -> 3);
    for 64x64 CelebA crops use e.g. ``channels=(32, 32, 64, 64, 128, 128)``, pooled every second conv.

    Args:
        in_channels: image channels (1 for FashionMNIST, 3 for CelebA).
        num_outputs: 1 for binary hKR, C for C classes.
        image_size: input height and width.
        channels: output channels of each convolution (even, for MaxMin).
        downsample_after: indices of the convolutions followed by a 2x2 L2-norm pooling; default
            every second convolution and the last one.
        hidden_features: width of the hidden linear layer (even).
        normalize_mean, normalize_std: optional per-channel input normalization.
        iterations: Björck steps in each orthogonal layer.

    Shape:
        - input: (B, in_channels, image_size, image_size)
        - output: (B, num_outputs)

    Example:
        >>> model = LipschitzConvNet(1, 10, image_size=28)
        >>> model(torch.rand(2, 1, 28, 28)).shape
        torch.Size([2, 10])
    """

    lipschitz_composition = "sequential"

    def __init__(
        self,
        in_channels: int,
        num_outputs: int,
        image_size: int,
        channels: Sequence[int] = (32, 32, 64, 64, 128),
        downsample_after: Sequence[int] | None = None,
        hidden_features: int = 128,
        normalize_mean: Sequence[float] | None = None,
        normalize_std: Sequence[float] | None = None,
        iterations: int = 12,
    ) -> None:
        super().__init__()
        if in_channels < 1 or num_outputs < 1 or image_size < 1:
            raise ValueError(
                f"`in_channels`, `num_outputs` and `image_size` must be positive, got "
                f"{in_channels}, {num_outputs}, {image_size}"
            )
        if not channels or any(width % 2 or width < 2 for width in channels):
            raise ValueError(f"`channels` must be non-empty even widths (MaxMin), got {list(channels)}")
        if hidden_features % 2 or hidden_features < 2:
            raise ValueError(f"`hidden_features` must be even (MaxMin), got {hidden_features}")
        if downsample_after is None:
            downsample_after = sorted({*range(1, len(channels), 2), len(channels) - 1})
        if any(not 0 <= index < len(channels) for index in downsample_after):
            raise ValueError(
                f"`downsample_after` must index the {len(channels)} convolutions, "
                f"got {list(downsample_after)}"
            )
        layers: list[nn.Module] = []
        if normalize_mean is not None or normalize_std is not None:
            if normalize_mean is None or normalize_std is None:
                raise ValueError("give both `normalize_mean` and `normalize_std`, or neither")
            layers.append(Normalize(normalize_mean, normalize_std))
        size, width = image_size, in_channels
        for index, out in enumerate(channels):
            layers += [OrthogonalConv2d(width, out, 3, iterations=iterations), MaxMin()]
            width = out
            if index in downsample_after:
                if size < 2:
                    raise ValueError(
                        f"`image_size` {image_size} is too small for {len(downsample_after)} poolings"
                    )
                layers.append(L2NormPool2d(2))
                size //= 2
        layers += [
            nn.Flatten(),
            OrthogonalLinear(width * size * size, hidden_features, iterations=iterations),
            MaxMin(),
            OrthogonalLinear(hidden_features, num_outputs, iterations=iterations),
        ]
        self.layers = nn.Sequential(*layers)

    def forward(self, input: Tensor) -> Tensor:
        return self.layers(input)
