"""Bounds (numerically, after training steps), tightness, caching, state dicts, compile."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode

from lightning_ot.nn import (
    GlobalL2NormPool2d,
    GroupSort,
    InvertibleDownsampling,
    L2NormPool2d,
    LipschitzResidual,
    MaxMin,
    Normalize,
    OrthogonalConv2d,
    OrthogonalLinear,
    bjorck_orthonormalize,
    compose_kernels,
    l2_norm_pool2d,
    lipschitz_audit,
    retract_weights_,
)
from lightning_ot.nn.conv import _bcop_kernel, _bcop_kernel_by_steps, _BCOPKernel, _orthonormal_bases
from lightning_ot.nn.linear import _bjorck_steps
from tests.nn._graph import graph_functions

BOUND = 1 + 1e-4


def _train_randomly(module: nn.Module, input_shape: tuple[int, ...], steps: int = 5) -> None:
    """A few large Adam steps on a random objective, so the raw parameters leave their init."""
    optimizer = torch.optim.Adam(module.parameters(), lr=0.05)
    for _ in range(steps):
        optimizer.zero_grad()
        output = module(torch.randn(4, *input_shape))
        (output * torch.randn_like(output)).sum().backward()
        optimizer.step()


@pytest.mark.parametrize("iterations", [0, 1, 3, 12])
@pytest.mark.parametrize("shape", [(8, 16), (16, 8), (3, 6, 6)])
def test_bjorck_bound_holds_for_any_iteration_count(iterations: int, shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    result = bjorck_orthonormalize(torch.randn(shape) * 5, iterations)
    assert torch.linalg.matrix_norm(result, ord=2).max() <= 1 + 1e-5


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_bjorck_converges_to_orthogonal(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    weight = torch.linalg.qr(torch.randn(32, 32, dtype=dtype)).Q + 0.05 * torch.randn(32, 32, dtype=dtype)
    result = bjorck_orthonormalize(weight[:, :20], 12)
    assert result.dtype == dtype
    torch.testing.assert_close(result.T @ result, torch.eye(20, dtype=dtype), atol=1e-5, rtol=0)


def _bjorck_recorded_by_autograd(weight: Tensor, iterations: int, tolerance: float | None) -> Tensor:
    wide = weight.shape[-2] <= weight.shape[-1]
    result = _bjorck_steps(weight if wide else weight.mT, iterations, tolerance)
    return result if wide else result.mT


@pytest.mark.parametrize(("iterations", "tolerance"), [(0, None), (1, None), (4, None), (12, 1e-3)])
@pytest.mark.parametrize("shape", [(8, 8), (8, 9), (6, 30), (30, 6), (3, 6, 6), (3, 4, 12), (2, 2, 5, 9)])
def test_bjorck_hand_written_backward_matches_autograd(
    shape: tuple[int, ...], iterations: int, tolerance: float | None
) -> None:
    # both the direct form (near-square) and the Gram form (wide), batched, tall and 4-D
    torch.manual_seed(0)
    weight = (3 * torch.randn(shape, dtype=torch.float64)).requires_grad_()
    grad_output = torch.randn(shape, dtype=torch.float64)
    result = bjorck_orthonormalize(weight, iterations, tolerance)
    expected = _bjorck_recorded_by_autograd(weight, iterations, tolerance)
    torch.testing.assert_close(result, expected, rtol=0, atol=1e-12)
    (grad,) = torch.autograd.grad(result, weight, grad_output)
    (expected_grad,) = torch.autograd.grad(expected, weight, grad_output)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("shape", [(6, 6), (4, 12)])
def test_bjorck_double_backward_matches_autograd(shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    weight = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    grad_output = torch.randn(shape, dtype=torch.float64)
    seconds = []
    for function in (bjorck_orthonormalize, _bjorck_recorded_by_autograd):
        (grad,) = torch.autograd.grad(function(weight, 3, None), weight, grad_output, create_graph=True)
        (second,) = torch.autograd.grad(grad.square().sum(), weight)
        seconds.append(second)
    torch.testing.assert_close(seconds[0], seconds[1], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(("in_features", "out_features"), [(16, 16), (24, 8), (8, 24)])
def test_orthogonal_linear_bound_and_tightness_after_training(in_features: int, out_features: int) -> None:
    torch.manual_seed(0)
    layer = OrthogonalLinear(in_features, out_features)
    _train_randomly(layer, (in_features,))
    singular_values = torch.linalg.svdvals(layer.weight.detach())
    assert singular_values.max() <= BOUND
    assert singular_values.min() >= 0.999  # semi-orthogonal: norm-preserving on its range
    report = lipschitz_audit(layer, (in_features,), empirical=False)
    assert report.layers[0].operator_norm <= BOUND


CONV_CASES = [
    (4, 4, 3, 1),
    (4, 8, 3, 1),
    (8, 4, 3, 1),
    (6, 6, 5, 1),
    (4, 4, 1, 1),
    (4, 16, 2, 2),
    (4, 8, 3, 2),
    (3, 12, 4, 2),
]


@pytest.mark.parametrize(("in_channels", "out_channels", "kernel_size", "stride"), CONV_CASES)
def test_orthogonal_conv_operator_norm_after_training(
    in_channels: int, out_channels: int, kernel_size: int, stride: int
) -> None:
    torch.manual_seed(0)
    conv = OrthogonalConv2d(in_channels, out_channels, kernel_size, stride=stride)
    _train_randomly(conv, (in_channels, 8, 8))
    # power iteration on the actual operator (its zero padding and stride), at two sizes
    for size in (8, 11):
        report = lipschitz_audit(conv, (in_channels, size, size), empirical=False, power_iterations=200)
        assert report.layers[0].operator_norm <= BOUND
    assert report.layers[0].operator_norm >= 0.95  # tight, not merely bounded


@pytest.mark.parametrize(("channels", "kernel_size"), [(4, 3), (6, 5), (5, 3)])
def test_orthogonal_conv_is_orthogonal_on_a_circular_domain(channels: int, kernel_size: int) -> None:
    torch.manual_seed(0)
    conv = OrthogonalConv2d(channels, channels, kernel_size)
    _train_randomly(conv, (channels, 8, 8))
    x = torch.randn(8, channels, 12, 12)
    pad = kernel_size // 2
    y = F.conv2d(F.pad(x, (pad, pad, pad, pad), mode="circular"), conv.weight.detach())
    torch.testing.assert_close(y.flatten(1).norm(dim=1), x.flatten(1).norm(dim=1), rtol=1e-5, atol=0)


def test_strided_conv_with_kernel_equal_stride_is_an_isometry() -> None:
    torch.manual_seed(0)
    conv = OrthogonalConv2d(4, 16, 2, stride=2, bias=False)
    x = torch.randn(8, 4, 10, 10)
    torch.testing.assert_close(conv(x).flatten(1).norm(dim=1), x.flatten(1).norm(dim=1), rtol=1e-5, atol=0)


def test_projection_bases_give_the_projector_of_the_bjorck_construction() -> None:
    # on a CPU the BCOP projections use QR bases: the same projectors as Björck's, exactly at the limit
    torch.manual_seed(0)
    matrices = torch.randn(4, 12, 6, dtype=torch.float64)
    bases = _orthonormal_bases(matrices, iterations=12)
    torch.testing.assert_close(bases.mT @ bases, torch.eye(6, dtype=torch.float64).expand(4, 6, 6))
    bjorck = bjorck_orthonormalize(matrices, iterations=30, tolerance=None)
    torch.testing.assert_close(bases @ bases.mT, bjorck @ bjorck.mT)


def test_compose_kernels_matches_two_convolutions() -> None:
    torch.manual_seed(0)
    first, second = torch.randn(5, 3, 3, 3), torch.randn(4, 5, 2, 2)
    x = torch.randn(2, 3, 12, 12)
    expected = F.conv2d(F.conv2d(x, first, padding=1), second, stride=2)
    torch.testing.assert_close(F.conv2d(x, compose_kernels(first, second), padding=1, stride=2), expected)


@pytest.mark.parametrize(
    ("batch", "channels", "inputs", "steps"),
    [(None, 4, 4, 2), (None, 8, 3, 4), (3, 4, 4, 8), (6, 16, 16, 4), (2, 6, 6, 6)],
)
def test_bcop_kernel_hand_written_backward_matches_autograd(
    batch: int | None, channels: int, inputs: int, steps: int
) -> None:
    # the fused projection steps against the same steps recorded by autograd, one layer (batch None)
    # or a stack of layers, with a column slice of the orthogonal matrix as the 1 x 1 kernel
    torch.manual_seed(0)
    leading = () if batch is None else (batch,)
    square = torch.randn(*leading, channels, channels, 1, 1, dtype=torch.float64)
    kernel = square[..., :inputs, :, :].requires_grad_()
    bases = torch.linalg.qr(torch.randn(*leading, steps, channels, channels // 2, dtype=torch.float64)).Q
    bases.requires_grad_()
    result = _bcop_kernel(kernel, bases)
    expected = _bcop_kernel_by_steps(kernel, bases)
    assert "_BCOPKernelBackward" in graph_functions(result)
    assert "_BCOPKernelBackward" not in graph_functions(expected)
    assert result.shape == (*leading, channels, inputs, 1 + steps // 2, 1 + steps // 2)
    torch.testing.assert_close(result, expected, rtol=0, atol=1e-12)
    grad_output = torch.randn_like(result)
    grads = torch.autograd.grad(result, (kernel, bases), grad_output)
    expected_grads = torch.autograd.grad(expected, (kernel, bases), grad_output)
    for grad, expected_grad in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(grad, expected_grad, rtol=1e-10, atol=1e-12)


def test_bcop_kernel_function_passes_gradcheck_and_double_backward() -> None:
    torch.manual_seed(0)
    kernel = torch.randn(2, 4, 3, 1, 1, dtype=torch.float64, requires_grad=True)
    bases = torch.linalg.qr(torch.randn(2, 4, 4, 2, dtype=torch.float64)).Q.requires_grad_()

    def fused(kernel: Tensor, bases: Tensor) -> Tensor:
        return _BCOPKernel.apply(kernel, bases)[0]

    assert torch.autograd.gradcheck(fused, (kernel, bases))
    assert torch.autograd.gradgradcheck(fused, (kernel, bases))


def test_bcop_kernel_takes_the_recorded_steps_under_transforms() -> None:
    # vmap, forward-mode AD and autocast see the steps as differentiable operations, with the same values
    torch.manual_seed(0)
    kernel = torch.randn(3, 4, 4, 1, 1)
    bases = torch.linalg.qr(torch.randn(3, 4, 4, 2)).Q
    expected = _bcop_kernel_by_steps(kernel, bases)
    mapped = torch.func.vmap(_bcop_kernel)(kernel, bases)
    torch.testing.assert_close(mapped, expected)
    tangent = torch.randn_like(bases)
    value, derivative = torch.func.jvp(lambda b: _bcop_kernel(kernel, b), (bases,), (tangent,))
    _, expected_derivative = torch.func.jvp(lambda b: _bcop_kernel_by_steps(kernel, b), (bases,), (tangent,))
    torch.testing.assert_close(value, expected)
    torch.testing.assert_close(derivative, expected_derivative)
    # under autocast the products run in its dtype, as the recorded steps decide
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = _bcop_kernel(kernel.requires_grad_(), bases)
        expected = _bcop_kernel_by_steps(kernel, bases)
    assert "_BCOPKernelBackward" not in graph_functions(autocast)
    torch.testing.assert_close(autocast, expected, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("dim", [1, -1])
def test_max_min_matches_definition_and_gradients(dtype: torch.dtype, dim: int) -> None:
    torch.manual_seed(0)
    x = torch.randn(3, 6, 4, 4, dtype=dtype, requires_grad=True)
    first, second = x.detach().chunk(2, dim=dim)
    expected = torch.cat([torch.maximum(first, second), torch.minimum(first, second)], dim=dim)
    output = MaxMin(dim)(x)
    torch.testing.assert_close(output.detach(), expected)
    if dtype == torch.float64:
        assert torch.autograd.gradcheck(MaxMin(dim), (x,))
    grad_output = torch.randn_like(output)
    (grad,) = torch.autograd.grad(output, x, grad_output)
    torch.testing.assert_close(grad.norm(), grad_output.norm())  # a permutation: norms preserved


def test_max_min_backward_is_twice_differentiable() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 6, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(MaxMin(), (x,))


def test_max_min_backward_fills_no_gradient_for_its_mask() -> None:
    """The mask is an output autograd never differentiates: the backward writes no zeros for it."""

    class RecordedOperations(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.names: list[str] = []

        def __torch_dispatch__(
            self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None
        ) -> Any:
            self.names.append(func.__name__)
            return func(*args, **(kwargs or {}))

    x = torch.randn(4, 6, requires_grad=True)
    output = MaxMin()(x)
    with RecordedOperations() as recorded:
        output.backward(torch.ones_like(output))
    assert not [name for name in recorded.names if name.startswith(("zeros", "zero_", "fill_"))]
    torch.testing.assert_close(x.grad, torch.ones_like(x))


def test_max_min_rejects_odd_channels() -> None:
    with pytest.raises(ValueError, match="even"):
        MaxMin()(torch.randn(2, 3))


def test_group_sort_is_a_sort_within_groups() -> None:
    x = torch.randn(2, 8, 3)
    output = GroupSort(4)(x)
    torch.testing.assert_close(
        output.unflatten(1, (2, 4)), x.unflatten(1, (2, 4)).sort(dim=2, descending=True).values
    )
    with pytest.raises(ValueError, match="divisible"):
        GroupSort(3)(x)


@pytest.mark.parametrize(("kernel_size", "stride"), [(2, None), (3, 1), (3, 2)])
def test_l2_norm_pool_is_1_lipschitz(kernel_size: int, stride: int | None) -> None:
    torch.manual_seed(0)
    pool = L2NormPool2d(kernel_size, stride)
    x, y = torch.randn(64, 2, 8, 8), torch.randn(64, 2, 8, 8)
    ratio = (pool(x) - pool(y)).flatten(1).norm(dim=1) / (x - y).flatten(1).norm(dim=1)
    assert ratio.max() <= BOUND
    # the output is an L2 norm of each (scaled) window: its input gradient has norm 1 per window
    x.requires_grad_(True)
    (grad,) = torch.autograd.grad(pool(x)[:, :, 0, 0].sum(), x)
    if stride is None:
        torch.testing.assert_close(grad[:, :, :2, :2].flatten(2).norm(dim=2), torch.ones(64, 2))


@pytest.mark.parametrize("kernel_size", [2, 3])
@pytest.mark.parametrize("shape", [(2, 3, 8, 8), (2, 3, 7, 9), (3, 6, 6)])
def test_l2_norm_pool_matches_its_definition(kernel_size: int, shape: tuple[int, ...]) -> None:
    # disjoint windows take a strided-view path (dropping rows and columns past the last window)
    torch.manual_seed(0)
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    expected = (F.avg_pool2d(x * x, kernel_size) * kernel_size**2 + 1e-12).sqrt()
    output = l2_norm_pool2d(x, kernel_size)
    torch.testing.assert_close(output, expected)
    grad_output = torch.randn_like(output)
    (grad,) = torch.autograd.grad(output, x, grad_output)
    (expected_grad,) = torch.autograd.grad(expected, x, grad_output)
    torch.testing.assert_close(grad, expected_grad)
    with torch.no_grad():
        torch.testing.assert_close(l2_norm_pool2d(x, kernel_size), expected.detach())
    assert torch.autograd.gradcheck(lambda t: l2_norm_pool2d(t, kernel_size), (x,))
    assert torch.autograd.gradgradcheck(lambda t: l2_norm_pool2d(t, kernel_size), (x,))


def test_l2_norm_pool_rejects_inputs_that_are_not_images() -> None:
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        L2NormPool2d(2)(torch.randn(4, 4, requires_grad=True))
    with pytest.raises(RuntimeError, match="too small"):
        L2NormPool2d(2)(torch.randn(1, 2, 1, 5, requires_grad=True))


def test_global_l2_norm_pool_and_invertible_downsampling_preserve_norms() -> None:
    x = torch.randn(4, 3, 8, 8)
    torch.testing.assert_close(GlobalL2NormPool2d()(x), x.flatten(2).norm(dim=2))
    down = InvertibleDownsampling(2)(x)
    torch.testing.assert_close(down, nn.PixelUnshuffle(2)(x))
    torch.testing.assert_close(down.norm(), x.norm())
    with pytest.raises(ValueError, match="divisible"):
        InvertibleDownsampling(3)(x)


def test_residual_block_bound() -> None:
    torch.manual_seed(0)
    block = LipschitzResidual(nn.Sequential(OrthogonalConv2d(4, 4, 3), MaxMin(), OrthogonalConv2d(4, 4, 3)))
    _train_randomly(block, (4, 8, 8))
    report = lipschitz_audit(block, (4, 8, 8), num_starts=8)
    assert report.upper_bound <= BOUND
    assert report.empirical <= BOUND


def test_weights_are_cached_in_eval_and_refreshed_when_parameters_change() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(OrthogonalConv2d(2, 4, 3), MaxMin(), nn.Flatten(), OrthogonalLinear(64, 2))
    conv, linear = model[0], model[3]
    assert conv.weight is not conv.weight  # training: recomputed, differentiable
    model.eval()
    assert conv.weight is conv.weight
    assert linear.weight is linear.weight
    assert not conv.weight.requires_grad
    cached = conv.weight
    with torch.inference_mode():
        model(torch.randn(1, 2, 4, 4))
    # the cache is built outside inference mode: input gradients still work in eval
    x = torch.randn(3, 2, 4, 4, requires_grad=True)
    model(x).sum().backward()
    assert x.grad is not None
    model.train()
    _train_randomly(model, (2, 4, 4), steps=1)
    model.eval()
    assert not torch.equal(conv.weight, cached)
    state = {key: value.clone() for key, value in model.state_dict().items()}
    other = nn.Sequential(OrthogonalConv2d(2, 4, 3), MaxMin(), nn.Flatten(), OrthogonalLinear(64, 2)).eval()
    before = other[0].weight
    other.load_state_dict(state)
    assert not torch.equal(other[0].weight, before)
    torch.testing.assert_close(other[0].weight, conv.weight)


def test_no_cache_or_mutable_buffer_in_state_dict() -> None:
    """DDP safety: the layers hold parameters only (no buffer changes in a step), caches are not state."""
    torch.manual_seed(0)
    model = nn.Sequential(
        OrthogonalConv2d(2, 4, 3), MaxMin(), L2NormPool2d(2), nn.Flatten(), OrthogonalLinear(16, 2)
    )
    assert list(model.buffers()) == []
    model.eval()
    model(torch.randn(1, 2, 4, 4))
    keys = set(model.state_dict())
    assert all("cache" not in key for key in keys)
    assert keys == {name for name, _ in model.named_parameters()}


def test_torch_compile_of_a_small_backbone() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        OrthogonalConv2d(1, 4, 3), MaxMin(), L2NormPool2d(2), nn.Flatten(), OrthogonalLinear(16, 2)
    )
    compiled = torch.compile(model, backend="aot_eager")
    x = torch.randn(3, 1, 4, 4)
    torch.testing.assert_close(compiled(x), model(x))
    compiled(x).sum().backward()
    assert model[0].orthogonal.grad is not None
    # retracted matrices: eagerly used as they are; compiled, orthonormalized as before (same values)
    retract_weights_(model, steps=8)
    model.zero_grad()
    torch.testing.assert_close(compiled(x), model(x), atol=1e-5, rtol=1e-5)
    compiled(x).sum().backward()
    assert model[0].orthogonal.grad is not None


@pytest.mark.parametrize("shape", [(3, 2), (3, 2, 5), (3, 2, 4, 5), (2, 2, 3, 4, 5)])
def test_normalize_matches_its_definition_at_every_rank(shape: tuple[int, ...]) -> None:
    layer = Normalize([0.5, -1.0], [0.25, 2.0])
    x = torch.randn(shape)
    view = (1, 2) + (1,) * (len(shape) - 2)
    expected = (x - torch.tensor([0.5, -1.0]).view(view)) / torch.tensor([0.25, 2.0]).view(view)
    torch.testing.assert_close(layer(x), expected)
