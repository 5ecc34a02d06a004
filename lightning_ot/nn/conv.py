"""Orthogonal 2-D convolution: BCOP kernels (stride 1) composed with RKO blocks (stride > 1).

Stride 1 follows the block convolution orthogonal parametrization (BCOP) of Li et al., *Preventing
gradient attenuation in Lipschitz constrained convolutional networks*, NeurIPS 2019: a ``k x k``
kernel is an orthogonal matrix followed by ``k - 1`` horizontal and ``k - 1`` vertical two-tap
convolutions ``[P, I - P]`` with symmetric projections ``P = Q Q^T``. A stride ``s`` is obtained as
in the adaptive orthogonal convolution of Boissin et al. (2025): a stride-1 BCOP kernel of size
``k - s + 1`` composed with an ``s x s`` stride-``s`` convolution whose reshaped kernel is
orthonormalized (RKO), which acts on disjoint patches. Everything is computed on the kernel (a few
small matrix products, independent of the batch size), and the layer runs as one ``F.conv2d``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_ot.nn._cache import WeightCache
from lightning_ot.nn._function import Function
from lightning_ot.nn._transforms import is_transformed, seen_eagerly
from lightning_ot.nn.bounds import certify_weight
from lightning_ot.nn.linear import (
    _PlannedRetraction,
    _retract_planned,
    _RetractedState,
    _RetractionMarks,
    _TangentProjection,
    _training_orthonormalization,
    _used_as_it_is,
    bjorck_orthonormalize,
)
from lightning_ot.nn.padding import circular_pad

__all__ = ["OrthogonalConv2d", "assembled_together", "compose_kernels"]


def _as_square(value: int | tuple[int, int], name: str) -> int:
    if isinstance(value, tuple | list):
        if len(value) != 2 or value[0] != value[1]:
            raise ValueError(f"`{name}` must be an int or a square pair, got {value}")
        value = value[0]
    if int(value) != value or value < 1:
        raise ValueError(f"`{name}` must be a positive integer, got {value}")
    return int(value)


def compose_kernels(first: Tensor, second: Tensor) -> Tensor:
    """Kernel of ``conv(conv(x, first), second)``: one cross-correlation kernel for both.

    Args:
        first: (mid, in, k1, k1) kernel applied first (stride 1).
        second: (out, mid, k2, k2) kernel applied second (any stride).

    Returns:
        (out, in, k1 + k2 - 1, k1 + k2 - 1) kernel; with the first layer's padding and the second
        layer's stride it computes the composition.

    Example:
        >>> a, b = torch.randn(3, 2, 3, 3), torch.randn(4, 3, 2, 2)
        >>> x = torch.randn(1, 2, 8, 8)
        >>> torch.nn.functional.conv2d(x, compose_kernels(a, b), stride=2).shape
        torch.Size([1, 4, 3, 3])
    """
    size = second.shape[-1] - 1
    return F.conv2d(first.transpose(0, 1), second.flip(-2, -1), padding=size).transpose(0, 1)


def _bases_by_qr(device: torch.device) -> bool:
    """Whether :func:`_orthonormal_bases` uses a QR decomposition (on a CPU) rather than Björck's iteration."""
    return device.type == "cpu"


def _orthonormal_bases(matrices: Tensor, iterations: int) -> Tensor:
    """An orthonormal basis of the column span of each tall matrix of a batch (*, n, m), m <= n.

    Only the span matters to the projections ``P = Q Q^T`` built from it, and every orthonormal basis
    of the span gives the same ``P``: on a CPU the Q factor of a QR decomposition is used (two to
    three times faster than Björck's iteration there, forward and backward, and exact whatever the
    conditioning); on an accelerator, where small batched QR decompositions are slow, Björck's
    iteration (matrix products only) gives the same projections to its tolerance.
    """
    if not _bases_by_qr(matrices.device):
        return bjorck_orthonormalize(matrices, iterations)
    dtype = matrices.dtype
    if dtype in (torch.float16, torch.bfloat16):
        matrices = matrices.float()
    return torch.linalg.qr(matrices).Q.to(dtype)


def _projection_step(kernel: Tensor, basis: Tensor, dim: int) -> Tensor:
    """Apply the two-tap block convolution ``[P, I - P]`` (``P = basis basis^T``) along ``dim``.
    Shapes: kernel (*, c, i, h, w), basis (*, c, r)."""
    flat = kernel.flatten(-3)
    projected = (basis @ (basis.mT @ flat)).view(kernel.shape)
    rest = kernel - projected
    if dim == -1:
        return F.pad(projected, (0, 1)) + F.pad(rest, (1, 0))
    return F.pad(projected, (0, 0, 0, 1)) + F.pad(rest, (0, 0, 1, 0))


def _bcop_kernel_by_steps(kernel: Tensor, bases: Tensor) -> Tensor:
    """:func:`_bcop_kernel` in differentiable operations (any autograd mode, transform or tracer)."""
    for index in range(0, bases.shape[-3], 2):
        kernel = _projection_step(kernel, bases[..., index, :, :], dim=-1)
        kernel = _projection_step(kernel, bases[..., index + 1, :, :], dim=-2)
    return kernel


class _BCOPKernel(Function):
    """The projection steps of :func:`_bcop_kernel` for a batch of kernels, with their backward written out.

    Autograd records some twenty operations per step (two products, the padding and the sums of
    shifted halves, and their backward); the steps of a small kernel cost those calls, not their
    arithmetic. Step ``s`` maps a kernel ``K`` to ``out[j] = P K[j] + (I - P) K[j - 1]`` along its
    axis (``P = Q Q^T``, ``K[-1] = K[w] = 0``), so with ``G`` the gradient of ``out`` and
    ``D[j] = G[j] - G[j + 1]`` the gradients are ``G[j + 1] + P D[j]`` for ``K`` and
    ``(D K^T + K D^T) Q`` for ``Q``, summed over the kernel's positions: six batched products and
    five elementwise operations per step, forward and backward together. The
    forward returns the kernels before each step and their coordinates ``Q^T K`` as non-differentiable
    outputs (what the backward needs). A backward that is itself recorded (double backward) recomputes
    the steps in differentiable operations. Shapes: kernel (L, c, i, 1, 1), bases (L, S, c, r); output
    (L, c, i, 1 + S / 2, 1 + S / 2).
    """

    @staticmethod
    def forward(kernel: Tensor, bases: Tensor) -> tuple[Tensor, ...]:
        count, channels = kernel.shape[:2]
        kernels, coordinates = [], []
        columns, rows = bases.unbind(1), bases.mT.unbind(1)
        for index in range(bases.shape[1]):
            coordinate = torch.bmm(rows[index], kernel.reshape(count, channels, -1))
            projected = torch.bmm(columns[index], coordinate).view(kernel.shape)
            rest = kernel - projected
            height, width = kernel.shape[-2:]
            if index % 2 == 0:  # horizontal: one more column
                shifted = kernel.new_zeros(*kernel.shape[:-1], width + 1)
                shifted[..., :-1] += projected
                shifted[..., 1:] += rest
            else:  # vertical: one more row
                shifted = kernel.new_zeros(*kernel.shape[:-2], height + 1, width)
                shifted[..., :-1, :] += projected
                shifted[..., 1:, :] += rest
            kernels.append(shifted)
            coordinates.append(coordinate)
            kernel = shifted
        # the kernels before each step but the first (the input, saved as such)
        return kernel, *kernels[:-1], *coordinates

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Tensor, Tensor], output: tuple[Tensor, ...]) -> None:
        ctx.mark_non_differentiable(*output[1:])
        ctx.save_for_backward(*inputs, *output[1:])
        ctx.steps = inputs[1].shape[1]

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor, *_: Tensor | None) -> tuple[Tensor | None, Tensor | None]:
        kernel, bases, *saved = ctx.saved_tensors
        if torch.is_grad_enabled():
            return _recorded_bcop_backward(kernel, bases, grad_output, ctx.needs_input_grad)
        kernels, coordinates = [kernel, *saved[: ctx.steps - 1]], saved[ctx.steps - 1 :]
        count, channels = kernel.shape[:2]
        columns, rows = bases.unbind(1), bases.mT.unbind(1)
        grad = grad_output
        grad_bases: list[Tensor] = [grad] * ctx.steps
        for index in reversed(range(ctx.steps)):
            if index % 2 == 0:
                following = grad[..., 1:]
                difference = grad[..., :-1] - following
            else:
                following = grad[..., 1:, :]
                difference = grad[..., :-1, :] - following
            flat = difference.view(count, channels, -1)
            back = torch.bmm(rows[index], flat)
            before = kernels[index].reshape(count, channels, -1)
            grad_bases[index] = torch.baddbmm(torch.bmm(flat, coordinates[index].mT), before, back.mT)
            grad = torch.bmm(columns[index], back).view(difference.shape).add_(following)
        return grad, torch.stack(grad_bases, dim=1)


def _recorded_bcop_backward(
    kernel: Tensor, bases: Tensor, grad_output: Tensor, needs: tuple[bool, ...]
) -> tuple[Tensor | None, Tensor | None]:
    """The gradients of :class:`_BCOPKernel` as a differentiable function of its inputs (double backward)."""
    inputs = [tensor for tensor, wanted in zip((kernel, bases), needs, strict=True) if wanted]
    with torch.enable_grad():
        output = _bcop_kernel_by_steps(kernel, bases)
        grads = iter(torch.autograd.grad(output, inputs, grad_output, create_graph=True, allow_unused=True))
    return tuple(next(grads) if wanted else None for wanted in needs)  # type: ignore[return-value]


def _bcop_kernel(kernel: Tensor, bases: Tensor | None) -> Tensor:
    """The BCOP kernel from the 1 x 1 kernel of the orthogonal matrix and the projections' bases:
    one horizontal and one vertical step per pair of bases. Shapes: kernel (*, c, i, 1, 1), bases
    (*, 2 (k - 1), c, c / 2) or None (k = 1); result (*, c, i, k, k)."""
    if bases is None or bases.shape[-3] == 0:
        return kernel
    fused = (
        kernel.dim() in (4, 5)
        and bases.dim() == kernel.dim() - 1
        and seen_eagerly(kernel, bases)
        and not torch.is_autocast_enabled(kernel.device.type)
    )
    if fused:
        if kernel.dim() == 4:
            return _BCOPKernel.apply(kernel[None], bases[None])[0][0]
        return _BCOPKernel.apply(kernel, bases)[0]
    return _bcop_kernel_by_steps(kernel, bases)


def _assemble(layers: list[OrthogonalConv2d]) -> list[Tensor]:
    """The kernels of layers of one :meth:`OrthogonalConv2d._assembly_group`, in one batched pass:
    the same operations as :meth:`OrthogonalConv2d.compute_weight`, on stacked matrices."""
    first = layers[0]
    orthogonal = _TangentProjection.apply(torch.stack([layer.orthogonal for layer in layers]))
    bases = _orthonormal_bases(torch.stack([layer.projections for layer in layers]), first.iterations)
    kernel = _bcop_kernel(orthogonal[:, :, : first.in_channels, None, None], bases)
    return [single[: first.out_channels].contiguous() for single in kernel.unbind(0)]


@contextmanager
def assembled_together(module: nn.Module) -> Iterator[None]:
    """Inside, the training kernels of the :class:`OrthogonalConv2d` layers of ``module`` that share a
    configuration are built together, in one batched pass per configuration.

    The kernel of a small BCOP convolution costs some thirty small operations forward and more
    backward, whatever the batch; a network of several convolutions of the same shape spends more
    on those calls than on the products (nine kernels of 4 and 16 channels, forward and backward, one
    thread: 6.3-6.8 ms one by one, 2.6-3.3 ms together; the projection steps of each pass are one
    autograd function with its backward written out, ``_BCOPKernel``, a further 0.8-0.9 ms less).
    Each layer's ``weight`` is then that kernel: the
    same values and gradients as its own (to float32 rounding). It applies to stride-1 kernels of
    retracted matrices in training forwards on a CPU (see :func:`~lightning_ot.nn.retract_weights_`);
    every other kernel is computed by its layer as before, and so is every kernel outside.

    Example:
        >>> from lightning_ot.nn import retract_weights_
        >>> convs = nn.Sequential(OrthogonalConv2d(4, 4, 3), OrthogonalConv2d(4, 4, 3))
        >>> _ = retract_weights_(convs), retract_weights_(convs)
        >>> x = torch.randn(2, 4, 8, 8)
        >>> with assembled_together(convs):
        ...     together = convs(x)
        >>> torch.allclose(together, convs(x), atol=1e-5)
        True
    """
    groups: defaultdict[tuple, list[OrthogonalConv2d]] = defaultdict(list)
    if not torch.compiler.is_compiling():
        for layer in module.modules():
            if isinstance(layer, OrthogonalConv2d):
                group = layer._assembly_group()
                if group is not None:
                    groups[group].append(layer)
    assembled: list[OrthogonalConv2d] = []
    try:
        for layers in groups.values():
            if len(layers) < 2:
                continue
            for layer, kernel in zip(layers, _assemble(layers), strict=True):
                layer._assembled = (WeightCache._key(layer._sources()), kernel)
                assembled.append(layer)
        yield
    finally:
        for layer in assembled:
            layer._assembled = None


class OrthogonalConv2d(_RetractedState, nn.Module):
    """2-D convolution with an orthogonal kernel: 1-Lipschitz (certified) and norm-preserving.

    With stride 1 the convolution (on an unbounded or circular domain) is orthogonal when
    ``in_channels == out_channels``, an isometry when ``out_channels > in_channels`` and a
    co-isometry (its transpose is an isometry, so gradients keep their norm) when fewer. With stride
    ``s`` it is an isometry when ``out_channels >= s^2 in_channels``, a co-isometry otherwise. With
    zero padding the operator is a restriction of that one, so its norm is still <= 1 (away from the
    border it keeps the same tightness). See the module docstring for the construction.

    In training mode with gradients on, the kernel is recomputed (differentiable) at every call; its
    norm is <= 1 in exact arithmetic, up to float32 rounding (1 + 2.6e-6 seen). In eval mode or without
    autograd it is cached and certified by :func:`~lightning_ot.nn.bounds.certify_weight`: provably
    <= 1 for its actual floating-point values, on the infinite plane (hence with any zero padding and
    image size), after a relative rescale of at most about 2e-5 in float32.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: square kernel size ``k >= stride``.
        stride: square stride.
        padding: padding on each side; default ``(k - 1) // 2`` ("same" for odd ``k`` and stride 1).
        padding_mode: ``"zeros"`` or ``"circular"``. With circular padding, stride 1, ``padding =
            (k - 1) // 2`` and odd ``k``, the layer is exactly the convolution on a torus: orthogonal
            when ``in_channels == out_channels`` (the image must be at least ``k`` wide), so it
            preserves norms and gradient norms everywhere, the border included. Zero padding keeps the
            bound but loses tightness at the border (a restriction of the orthogonal operator).
        bias: learn an additive bias.
        iterations: Björck steps for each orthogonal factor (any number keeps the bound).

    Shape:
        - input: (B, in_channels, H, W)
        - output: (B, out_channels, H', W') as for ``nn.Conv2d`` with the same arguments

    Example:
        >>> conv = OrthogonalConv2d(4, 4, 3)
        >>> x = torch.randn(2, 4, 8, 8)
        >>> conv(x).shape
        torch.Size([2, 4, 8, 8])
        >>> OrthogonalConv2d(4, 16, 2, stride=2)(x).shape
        torch.Size([2, 16, 4, 4])
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] | None = None,
        bias: bool = True,
        iterations: int = 12,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        padding_mode: str = "zeros",
    ) -> None:
        super().__init__()
        if padding_mode not in ("zeros", "circular"):
            raise ValueError(f"`padding_mode` must be 'zeros' or 'circular', got {padding_mode!r}")
        if in_channels < 1 or out_channels < 1:
            raise ValueError(f"channels must be positive, got in={in_channels}, out={out_channels}")
        size = _as_square(kernel_size, "kernel_size")
        step = _as_square(stride, "stride")
        if size < step:
            raise ValueError(f"`kernel_size` ({size}) must be >= `stride` ({step})")
        if padding is None:
            padding = (size - 1) // 2
        if isinstance(padding, tuple | list):
            padding = tuple(int(p) for p in padding)
        else:
            padding = (int(padding), int(padding))
        if min(padding) < 0:
            raise ValueError(f"`padding` must be >= 0, got {padding}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = (size, size)
        self.stride = (step, step)
        self.padding = padding
        self.padding_mode = padding_mode
        self.iterations = iterations
        factory = {"device": device, "dtype": dtype}
        self.bcop_size = size - step + 1
        channels = max(in_channels, out_channels) if step == 1 else in_channels
        if self.bcop_size == 1 and step == 1:
            # a 1x1 convolution: one semi-orthogonal matrix, nothing to crop
            self.orthogonal: nn.Parameter | None = nn.Parameter(
                torch.empty(out_channels, in_channels, **factory)
            )
        elif self.bcop_size == 1:
            # kernel == stride: the reshaped block alone is the whole (orthogonal) convolution
            self.register_parameter("orthogonal", None)
        else:
            self.orthogonal = nn.Parameter(torch.empty(channels, channels, **factory))
        half = channels // 2
        if self.bcop_size > 1 and half > 0:
            shape = (2 * (self.bcop_size - 1), channels, half)
            self.projections: nn.Parameter | None = nn.Parameter(torch.empty(shape, **factory))
        else:
            self.register_parameter("projections", None)
        if step > 1:
            shape = (out_channels, in_channels * step * step)
            self.reshaped: nn.Parameter | None = nn.Parameter(torch.empty(shape, **factory))
        else:
            self.register_parameter("reshaped", None)
        if bias:
            self.bias: nn.Parameter | None = nn.Parameter(torch.empty(out_channels, **factory))
        else:
            self.register_parameter("bias", None)
        self._cache = WeightCache()
        self._retracted = _RetractionMarks()
        # (identity of the sources, kernel) while `assembled_together` holds a kernel for this layer
        self._assembled: tuple[tuple, Tensor] | None = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.orthogonal is not None:
            nn.init.orthogonal_(self.orthogonal)
        if self.projections is not None:
            for matrix in self.projections.data:
                nn.init.orthogonal_(matrix)
        if self.reshaped is not None:
            nn.init.orthogonal_(self.reshaped)
        if self.bias is not None:
            nn.init.zeros_(self.bias)
        self._cache.clear()

    def _sources(self) -> tuple[Tensor, ...]:
        return tuple(p for p in (self.orthogonal, self.projections, self.reshaped) if p is not None)

    def compute_weight(self) -> Tensor:
        """(out_channels, in_channels, k, k) kernel, differentiable in the parameters."""
        step = self.stride[0]
        if self.orthogonal is None:
            assert self.reshaped is not None
            block = _training_orthonormalization(self.reshaped, self.iterations, self._retracted)
            return block.reshape(self.out_channels, self.in_channels, step, step)
        kernel = _training_orthonormalization(self.orthogonal, self.iterations, self._retracted)
        if step == 1:
            # the projection steps multiply from the output side: keep only the input columns used
            kernel = kernel[:, : self.in_channels]
        bases = None if self.projections is None else _orthonormal_bases(self.projections, self.iterations)
        kernel = _bcop_kernel(kernel[:, :, None, None], bases)
        if step == 1:
            return kernel[: self.out_channels].contiguous()
        assert self.reshaped is not None
        block = _training_orthonormalization(self.reshaped, self.iterations, self._retracted)
        block = block.reshape(self.out_channels, self.in_channels, step, step)
        return compose_kernels(kernel, block)

    def retract_(self, steps: int = 1) -> None:
        """Move the raw matrices toward orthonormal without changing the kernel (see :func:`retract_weights_`).

        The projections' matrices keep their column span, hence their projectors ``Q Q^T``. Where
        their bases come from a QR decomposition (on a CPU), which costs the same whatever their
        conditioning, they are left alone. Until the next change of a retracted matrix, training
        forwards use it as it is, its gradient projected on the tangent space (as
        :meth:`OrthogonalLinear.retract_ <lightning_ot.nn.OrthogonalLinear.retract_>`); the
        projections' bases are always orthonormalized.
        """
        _retract_planned(self._retraction_plan(), steps)

    def _retraction_plan(self) -> list[_PlannedRetraction]:
        return [
            _PlannedRetraction(source, None if source is self.projections else self._retracted)
            for source in self._sources()
            if not (source is self.projections and _bases_by_qr(source.device))
        ]

    def _retractable_matrices(self) -> list[Tensor]:
        return [source for source in self._sources() if source is not self.projections]

    @property
    def weight(self) -> Tensor:
        """The kernel; cached and certified in eval mode (or without autograd) until the parameters change."""
        assembled = getattr(self, "_assembled", None)  # absent from layers pickled by earlier versions
        if (
            assembled is not None
            and not torch.compiler.is_compiling()
            and assembled[0] == WeightCache._key(self._sources())
            and WeightCache.recomputes(self, self._sources())
        ):
            return assembled[1]
        return self._cache.get(self, self._sources(), self.compute_weight, self._certify)

    def _assembly_group(self) -> tuple | None:
        """What a layer must share with others for :func:`assembled_together` to build their kernels
        together, or None when its kernel is not built that way: a stride-1 BCOP kernel of
        retracted matrices in a training forward, with bases by QR (on a CPU)."""
        if self.stride != (1, 1) or self.orthogonal is None or self.projections is None:
            return None
        if not (_bases_by_qr(self.projections.device) and WeightCache.recomputes(self, self._sources())):
            return None
        if is_transformed(self.projections) or not _used_as_it_is(self.orthogonal, self._retracted):
            return None
        return (
            self.in_channels,
            self.out_channels,
            self.bcop_size,
            self.orthogonal.dtype,
            self.orthogonal.device,
        )

    def _certify(self, kernel: Tensor) -> Tensor:
        return certify_weight(kernel, self.stride)

    @property
    def lipschitz_bound(self) -> float:
        return 1.0

    def forward(self, input: Tensor) -> Tensor:
        if self.padding_mode == "circular" and any(self.padding):
            rows, columns = self.padding
            padded = circular_pad(input, (columns, columns, rows, rows))
            return F.conv2d(padded, self.weight, self.bias, self.stride)
        return F.conv2d(input, self.weight, self.bias, self.stride, self.padding)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, padding_mode={self.padding_mode!r}, "
            f"bias={self.bias is not None}, "
            f"iterations={self.iterations}"
        )
