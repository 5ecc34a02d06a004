"""A gradient-norm-preserving 1-Lipschitz ConvNet: tight certificates and optimal-transport saliency."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from lightning_ot.nn import (
    BlockDiagonal,
    InvertibleDownsampling,
    MaxMin,
    Normalize,
    OrthogonalConv2d,
    OrthogonalLinear,
    assembled_together,
)

__all__ = ["NormPreservingConvNet"]


class NormPreservingConvNet(nn.Module):
    """ConvNet whose every layer preserves gradient norms: ``||grad f_k(x)|| = 1`` for every input.

    Each stage halves the resolution with a 2x2 space-to-depth (channels x 4, a permutation of the
    values), then applies square orthogonal convolutions with circular padding (orthogonal maps of
    the feature map, the border included) and MaxMin; the flattened features go through orthogonal
    linear layers whose widths never increase, and a last layer with orthonormal rows. No layer
    increases the dimension, so every layer's transposed Jacobian is an isometry on the gradients it
    receives: the network is 1-Lipschitz in L2 (times the optional normalization's factor) and its
    gradient norm is exactly 1 almost everywhere, which is what makes its saliency maps transport
    directions and its certificates ``(f_1 - f_2) / sqrt(2)`` tight (see the docs, Concepts).

    The price of tightness is width: the features never hold more values than the input (784 for a
    28x28 digit). :class:`LipschitzConvNet` widens to 32-128 channels at full resolution and is more
    accurate per epoch, but its gradient norm is about 0.3 after training.

    Args:
        in_channels: image channels.
        num_outputs: 1 for binary hKR, C for C classes (at most the last hidden width).
        image_size: input height and width (divisible by ``2 ** len(stage_convs)``).
        stage_convs: orthogonal convolutions in each stage (one stage per entry).
        kernel_size: kernel size of the convolutions (odd), one for all stages or one per stage.
        hidden_features: widths of the hidden linear layers (even, non-increasing, at most the
            flattened feature size).
        hidden_groups: diagonal blocks of each hidden linear layer, one count for all layers or one
            per layer: ``g`` splits a layer into ``g`` independent orthogonal layers on consecutive
            slices of its input (:class:`~lightning_ot.nn.BlockDiagonal`; the flattened features
            are channel-major, so a slice is a group of channels at every position). Orthonormalizing
            an ``m x n`` matrix costs ``O(m^2 n)`` per optimizer step whatever the batch, ``g`` blocks
            ``1 / g^2`` of it: the cost that dominates the training step of a small batch. Both the
            input and the output width must be divisible by ``g``.
        padding_mode: ``"circular"`` (exactly norm-preserving) or ``"zeros"`` (tightness lost at the
            border).
        normalize_mean, normalize_std: optional per-channel input normalization.
        iterations: Björck steps in each orthogonal layer.

    Shape:
        - input: (B, in_channels, image_size, image_size)
        - output: (B, num_outputs)

    Example:
        >>> model = NormPreservingConvNet(1, 10, image_size=28, stage_convs=(1, 1), hidden_features=(64,))
        >>> x = torch.rand(2, 1, 28, 28, requires_grad=True)
        >>> model(x)[:, 3].sum().backward()
        >>> x.grad.flatten(1).norm(dim=1)
        tensor([1.0000, 1.0000])
    """

    lipschitz_composition = "sequential"

    def __init__(
        self,
        in_channels: int,
        num_outputs: int,
        image_size: int,
        stage_convs: Sequence[int] = (3, 6),
        kernel_size: int | Sequence[int] = 3,
        hidden_features: Sequence[int] = (512,),
        hidden_groups: int | Sequence[int] = 1,
        padding_mode: str = "circular",
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
        if not stage_convs:
            raise ValueError("`stage_convs` needs at least one stage")
        kernel_sizes = [kernel_size] * len(stage_convs) if isinstance(kernel_size, int) else list(kernel_size)
        if len(kernel_sizes) != len(stage_convs):
            raise ValueError(
                f"`kernel_size` needs one entry per stage ({len(stage_convs)}) or a single int, got "
                f"{kernel_sizes}"
            )
        if any(size % 2 == 0 or size < 1 for size in kernel_sizes):
            raise ValueError(f"`kernel_size` must be odd (centred, same-size output), got {kernel_sizes}")
        if any(count < 0 for count in stage_convs):
            raise ValueError(f"`stage_convs` must be >= 0, got {list(stage_convs)}")
        if image_size % 2 ** len(stage_convs):
            raise ValueError(
                f"`image_size` {image_size} must be divisible by 2 ** {len(stage_convs)} "
                f"(one 2x2 space-to-depth per stage)"
            )
        layers: list[nn.Module] = []
        if normalize_mean is not None or normalize_std is not None:
            if normalize_mean is None or normalize_std is None:
                raise ValueError("give both `normalize_mean` and `normalize_std`, or neither")
            layers.append(Normalize(normalize_mean, normalize_std))
        channels, size = in_channels, image_size
        for count, kernel in zip(stage_convs, kernel_sizes, strict=True):
            layers.append(InvertibleDownsampling(2))
            channels, size = 4 * channels, size // 2
            for _ in range(count):
                layers += [
                    OrthogonalConv2d(
                        channels, channels, kernel, padding_mode=padding_mode, iterations=iterations
                    ),
                    MaxMin(),
                ]
        layers.append(nn.Flatten())
        width = channels * size * size
        groups = (
            [hidden_groups] * len(hidden_features) if isinstance(hidden_groups, int) else list(hidden_groups)
        )
        if len(groups) != len(hidden_features) or any(int(count) != count or count < 1 for count in groups):
            raise ValueError(
                f"`hidden_groups` needs one positive integer per hidden layer ({len(hidden_features)}) or a "
                f"single int, got {hidden_groups}"
            )
        for hidden, count in zip(hidden_features, groups, strict=True):
            if hidden % 2 or hidden < 2 or hidden > width:
                raise ValueError(
                    f"`hidden_features` must be even and non-increasing from the {width} flattened "
                    f"features (a wider layer would lose gradient norm), got {list(hidden_features)}"
                )
            if width % count or hidden % count:
                raise ValueError(
                    f"`hidden_groups` {count} must divide the layer's input width {width} and its output "
                    f"width {hidden}"
                )
            if count == 1:
                layers.append(OrthogonalLinear(width, hidden, iterations=iterations))
            else:
                blocks = [
                    OrthogonalLinear(width // count, hidden // count, iterations=iterations)
                    for _ in range(count)
                ]
                layers.append(BlockDiagonal(blocks))
            layers.append(MaxMin())
            width = hidden
        if num_outputs > width:
            raise ValueError(
                f"`num_outputs` ({num_outputs}) exceeds the last width ({width}): the outputs cannot have "
                "orthonormal gradients; widen `hidden_features`"
            )
        layers.append(OrthogonalLinear(width, num_outputs, iterations=iterations))
        self.layers = nn.Sequential(*layers)

    def forward(self, input: Tensor) -> Tensor:
        # the same-shape convolution kernels of a training step are built in one pass each
        with assembled_together(self):
            return self.layers(input)
