"""Circular padding with a written-out backward, and ``nn.Conv2d`` with circular padding through it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_ot.nn._function import Function
from lightning_ot.nn._transforms import seen_eagerly

__all__ = ["CircularPaddedConv2d", "circular_pad"]


class _CircularPad(Function):
    """``F.pad(input, pad, mode="circular")`` on the last two dimensions, its backward written out.

    PyTorch builds the circular padding from slices of slices, and autograd records each: its
    backward allocates a zero tensor of the padded size for every slice and adds them up (some ten
    passes over the padded tensor; 0.75 ms for a 128 x 16 x 9 x 9 result on one CPU thread, against
    0.15 ms for the forward, which is kept). The padding's adjoint folds the borders back onto the
    opposite sides: one copy of the interior rows, two sums of border rows, then the same for the
    columns. The backward is written in differentiable operations, so it is itself recorded where a
    double backward asks for it. Shapes: input (*, H, W), ``pad = (left, right, top, bottom)``, each
    at most the size it wraps; output (*, top + H + bottom, left + W + right).
    """

    @staticmethod
    def forward(input: Tensor, pad: tuple[int, int, int, int]) -> Tensor:
        # PyTorch's own padding: unrecorded here, it is faster than slice assignments
        return F.pad(input, pad, mode="circular")

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Tensor, tuple[int, int, int, int]], output: Tensor) -> None:
        ctx.pad = inputs[1]

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor, None]:
        left, right, top, bottom = ctx.pad
        height = grad_output.shape[-2] - top - bottom
        width = grad_output.shape[-1] - left - right
        rows = grad_output[..., top : top + height, :].clone()
        if bottom:
            rows[..., :bottom, :] += grad_output[..., top + height :, :]
        if top:
            rows[..., height - top :, :] += grad_output[..., :top, :]
        grad = rows[..., left : left + width].clone()
        if right:
            grad[..., :right] += rows[..., left + width :]
        if left:
            grad[..., width - left :] += rows[..., :left]
        return grad, None


def circular_pad(input: Tensor, pad: Sequence[int]) -> Tensor:
    """``F.pad(input, pad, mode="circular")`` for the last two dimensions, with a faster backward.

    The same values and gradients as PyTorch's circular padding; in a training step its forward and
    backward together take about half the time (``benchmarks/fixed_costs.py``). Without
    gradients, under ``torch.func`` transforms, forward-mode AD, tracing or compilation it is
    ``F.pad`` itself.

    Args:
        input: (*, H, W) tensor (at least 3-D, as for ``F.pad``).
        pad: ``(left, right, top, bottom)``, non-negative, ``left, right <= W`` and ``top, bottom <= H``.

    Returns:
        (*, top + H + bottom, left + W + right).

    Example:
        >>> x = torch.arange(6.0).view(1, 2, 3)
        >>> circular_pad(x, (1, 1, 0, 1))
        tensor([[[2., 0., 1., 2., 0.],
                 [5., 3., 4., 5., 3.],
                 [2., 0., 1., 2., 0.]]])
    """
    pad = tuple(int(size) for size in pad)
    recorded = seen_eagerly(input) and torch.is_grad_enabled() and input.requires_grad
    if len(pad) != 4 or input.dim() < 3 or not recorded:
        return F.pad(input, pad, mode="circular")
    left, right, top, bottom = pad
    height, width = input.shape[-2:]
    if min(pad) < 0 or max(left, right) > width or max(top, bottom) > height:
        return F.pad(input, pad, mode="circular")  # PyTorch's own error message
    return _CircularPad.apply(input, pad)


class CircularPaddedConv2d(nn.Conv2d):
    """``nn.Conv2d`` whose ``"circular"`` padding is :func:`circular_pad`: the same layer, trained faster.

    The same arguments, parameters, state dict and results as ``nn.Conv2d``; only the backward of
    the circular padding is cheaper. :func:`~lightning_ot.models.unconstrained_twin` builds its
    circular convolutions from it, so that a twin pads as :class:`~lightning_ot.nn.OrthogonalConv2d`
    does and a comparison of their training times measures the Lipschitz constraint alone. Any other
    padding mode is ``nn.Conv2d``'s.

    Shape:
        - input: (B, in_channels, H, W)
        - output: (B, out_channels, H', W') as for ``nn.Conv2d``

    Example:
        >>> conv = CircularPaddedConv2d(2, 4, 3, padding=1, padding_mode="circular")
        >>> conv(torch.randn(1, 2, 8, 8)).shape
        torch.Size([1, 4, 8, 8])
    """

    @classmethod
    def from_conv2d(cls, conv: nn.Conv2d) -> CircularPaddedConv2d:
        """The same convolution (arguments, parameters: shared, not copied) as a ``CircularPaddedConv2d``;
        no initialization runs, so no random number is drawn."""
        return _same_convolution(conv, cls)

    def as_conv2d(self) -> nn.Conv2d:
        """The same convolution as a plain ``nn.Conv2d`` (PyTorch's padding; parameters shared)."""
        return _same_convolution(self, nn.Conv2d)

    def _conv_forward(self, input: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        if self.padding_mode != "circular":
            return super()._conv_forward(input, weight, bias)
        padded = circular_pad(input, self._reversed_padding_repeated_twice)
        return F.conv2d(padded, weight, bias, self.stride, 0, self.dilation, self.groups)


_Convolution = TypeVar("_Convolution", bound=nn.Conv2d)


def _same_convolution(conv: nn.Conv2d, kind: type[_Convolution]) -> _Convolution:
    """A ``kind`` with ``conv``'s arguments, holding ``conv``'s parameters (built on the meta device:
    no initialization, no random numbers drawn)."""
    same = kind(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        groups=conv.groups,
        bias=conv.bias is not None,
        padding_mode=conv.padding_mode,
        device="meta",
    )
    same.load_state_dict(conv.state_dict(), assign=True)
    return same
