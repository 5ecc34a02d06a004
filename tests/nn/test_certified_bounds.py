"""Certified weights: operator norms <= 1 for the actual floating-point values, measured in float64."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_ot.models import LipschitzConvNet, LipschitzMLP, LipschitzResNet
from lightning_ot.nn import (
    OrthogonalConv2d,
    OrthogonalLinear,
    cached_weights,
    certify_weight,
    operator_norm_bound,
    vanilla_export,
)
from lightning_ot.nn.bounds import polyphase_kernel

CERTIFIED = 1 + 1e-12  # float64 measurement error of a norm of about 1


def circular_norm(kernel: Tensor, stride: int = 1, size: int = 24) -> float:
    """Exact norm of the convolution on a circular ``size * stride`` domain, in float64 (FFT).

    It is at least the norm of the zero-padded convolution on any image that fits with its padding
    (that operator is a restriction of the circular one) and at most the norm on the infinite plane.
    """
    phases = polyphase_kernel(kernel.detach().double(), stride)
    symbol = torch.fft.fft2(F.pad(phases, (0, size - phases.shape[-1], 0, size - phases.shape[-2])))
    return float(torch.linalg.matrix_norm(symbol.permute(2, 3, 0, 1), ord=2).max())


def dense_norm(kernel: Tensor, stride: int, padding: int, size: int) -> float:
    """Exact norm of the zero-padded convolution on ``size x size`` images: SVD of its dense matrix."""
    kernel = kernel.detach().double()
    basis = torch.eye(kernel.shape[1] * size * size, dtype=torch.float64)
    basis = basis.reshape(-1, kernel.shape[1], size, size)
    matrix = F.conv2d(basis, kernel, stride=stride, padding=padding).flatten(1)
    return float(torch.linalg.matrix_norm(matrix, ord=2))


def float64_norm(layer: nn.Module, weight: Tensor) -> float:
    if isinstance(layer, OrthogonalConv2d):
        return circular_norm(weight, layer.stride[0])
    return float(torch.linalg.matrix_norm(weight.detach().double(), ord=2))


def train_randomly(module: nn.Module, input_shape: tuple[int, ...], steps: int = 3) -> None:
    """A few large Adam steps on a random objective, so the raw parameters leave their init."""
    optimizer = torch.optim.Adam(module.parameters(), lr=0.05)
    module.train()
    for _ in range(steps):
        optimizer.zero_grad()
        output = module(torch.randn(2, *input_shape))
        (output * torch.randn_like(output)).sum().backward()
        optimizer.step()


@pytest.mark.parametrize(
    ("shape", "stride"),
    [
        ((5, 7), 1), ((7, 5), 1), ((4, 4, 1, 1), 1), ((3, 5, 2, 2), 1), ((4, 4, 3, 3), 1), ((6, 2, 3, 3), 1),
        ((3, 3, 5, 5), 1), ((8, 2, 2, 2), 2), ((4, 3, 3, 3), 2), ((6, 2, 4, 4), 2), ((2, 3, 5, 5), 2),
        ((5, 2, 3, 3), 3),
    ],
)  # fmt: skip
def test_bound_is_an_upper_bound_for_arbitrary_weights(shape: tuple[int, ...], stride: int) -> None:
    torch.manual_seed(0)
    weight = torch.randn(shape)
    bound = operator_norm_bound(weight, stride)
    if weight.ndim == 2:
        norm = float(torch.linalg.matrix_norm(weight.double(), ord=2))
        assert norm <= bound <= norm * (1 + 1e-12)  # exact for matrices
        return
    size = shape[-1]
    padded = dense_norm(weight, stride, padding=size - 1, size=7)
    circular = circular_norm(weight, stride)
    # (the float64 SVDs that measure the norms are accurate to about 1e-15)
    assert padded <= circular * (1 + 1e-13)
    assert circular <= bound * (1 + 1e-13)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_certify_weight_rescales_only_what_it_cannot_prove(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    inside = 0.5 * torch.linalg.qr(torch.randn(6, 6)).Q.to(dtype)
    assert certify_weight(inside) is inside
    orthogonal = torch.linalg.qr(torch.randn(6, 6, dtype=torch.float64)).Q.to(dtype)
    certified = certify_weight(orthogonal)
    assert certified.dtype == dtype
    assert operator_norm_bound(certified) <= 1
    assert float(torch.linalg.matrix_norm(certified.double(), ord=2)) <= CERTIFIED
    difference = (certified.double() - orthogonal.double()).norm() / orthogonal.double().norm()
    # tight: a rescale of a few rounding errors (in float64, of the float64 bound's own margins)
    assert difference <= max(8 * torch.finfo(dtype).eps, 1e-13)
    kernel = torch.randn(4, 4, 3, 3, dtype=torch.float64)
    certified_kernel = certify_weight(kernel, stride=2)
    assert circular_norm(certified_kernel, 2) <= CERTIFIED
    with pytest.raises(ValueError, match="non-finite"):
        certify_weight(torch.full((2, 2), float("nan")))
    with pytest.raises(ValueError, match="no stride"):
        operator_norm_bound(torch.eye(2), stride=2)


LAYERS = [
    ("linear square", lambda: OrthogonalLinear(32, 32), (32,)),
    ("linear wide", lambda: OrthogonalLinear(16, 48), (16,)),
    ("linear tall", lambda: OrthogonalLinear(256, 10), (256,)),
    ("linear 64->256", lambda: OrthogonalLinear(64, 256), (64,)),
    ("conv 1x1", lambda: OrthogonalConv2d(4, 8, 1), (4, 6, 6)),
    ("conv k2", lambda: OrthogonalConv2d(4, 4, 2), (4, 6, 6)),
    ("conv k3", lambda: OrthogonalConv2d(8, 8, 3), (8, 6, 6)),
    ("conv k3 up", lambda: OrthogonalConv2d(4, 16, 3), (4, 6, 6)),
    ("conv k3 down", lambda: OrthogonalConv2d(16, 4, 3), (16, 6, 6)),
    ("conv k5", lambda: OrthogonalConv2d(6, 6, 5), (6, 6, 6)),
    ("conv k==s=2", lambda: OrthogonalConv2d(4, 16, 2, stride=2), (4, 6, 6)),
    ("conv k3 s2", lambda: OrthogonalConv2d(4, 8, 3, stride=2), (4, 6, 6)),
    ("conv k3 s2 down", lambda: OrthogonalConv2d(8, 4, 3, stride=2), (8, 6, 6)),
    ("conv k5 s2", lambda: OrthogonalConv2d(3, 12, 5, stride=2), (3, 6, 6)),
]


@pytest.mark.parametrize(("name", "factory", "input_shape"), LAYERS, ids=[layer[0] for layer in LAYERS])
def test_eval_weight_is_certified_after_training(name: str, factory, input_shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    layer = factory()
    train_randomly(layer, input_shape)
    training_weight = layer.weight.detach()
    layer.eval()
    weight = layer.weight
    stride = getattr(layer, "stride", (1, 1))[0]
    assert operator_norm_bound(weight, stride) <= 1
    norm = float64_norm(layer, weight)
    assert norm <= CERTIFIED
    assert norm >= 1 - 2e-5  # still orthogonal: tight, not merely bounded
    difference = (weight.double() - training_weight.double()).norm() / training_weight.double().norm()
    assert difference <= 2e-5  # the certified weight is the training weight rescaled by b ~ 1 + 1e-5


def test_dense_zero_padded_operator_of_a_certified_conv() -> None:
    torch.manual_seed(0)
    conv = OrthogonalConv2d(3, 6, 3, stride=2)
    train_randomly(conv, (3, 6, 6))
    conv.eval()
    assert dense_norm(conv.weight, 2, padding=1, size=8) <= circular_norm(conv.weight, 2) <= CERTIFIED


MODELS = [
    ("mlp", lambda: LipschitzMLP(64, 10, hidden_features=(32, 32)), (1, 8, 8)),
    (
        "convnet",
        lambda: LipschitzConvNet(1, 10, image_size=8, channels=(8, 8, 16), hidden_features=16),
        (1, 8, 8),
    ),
    (
        "resnet",
        lambda: LipschitzResNet(3, 10, width_multiplier=0.125, stage_blocks=(1, 1, 1, 1)),
        (3, 32, 32),
    ),
]


@pytest.mark.parametrize(("name", "factory", "input_shape"), MODELS, ids=[model[0] for model in MODELS])
def test_every_weight_of_the_models_is_certified_and_exported(name: str, factory, input_shape) -> None:
    torch.manual_seed(0)
    model = factory()
    train_randomly(model, input_shape, steps=2)
    model.eval()
    layers = [m for m in model.modules() if isinstance(m, OrthogonalLinear | OrthogonalConv2d)]
    for layer in layers:
        assert float64_norm(layer, layer.weight) <= CERTIFIED
    names = {layer: name for name, layer in model.named_modules()}
    exported = vanilla_export(model).state_dict()  # flat keys: "layers.1.weight" -> "layers_1_weight"
    for layer in layers:
        assert torch.equal(exported[names[layer].replace(".", "_") + "_weight"], layer.weight)


def test_training_weight_is_differentiable_and_cached_weights_certifies_it() -> None:
    torch.manual_seed(0)
    layer = OrthogonalLinear(64, 256)
    train_randomly(layer, (64,))
    assert layer.weight.requires_grad
    with cached_weights():
        weight = layer.weight
        assert weight is layer.weight
        assert not weight.requires_grad
    assert float64_norm(layer, weight) <= CERTIFIED
    assert layer.weight.requires_grad  # training behaviour is back outside


def test_compiled_eval_model_uses_the_cached_certified_weights() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(OrthogonalConv2d(1, 4, 3), nn.Flatten(), OrthogonalLinear(64, 2))
    train_randomly(model, (1, 4, 4), steps=1)
    model.eval().zero_grad(set_to_none=True)
    compiled = torch.compile(model, backend="aot_eager")
    x = torch.randn(3, 1, 4, 4, requires_grad=True)
    torch.testing.assert_close(compiled(x), model(x))
    weight = model[0].weight
    compiled(x).sum().backward()  # input gradients in eval, no graph to the parameters
    assert x.grad is not None
    assert model[0].orthogonal.grad is None
    assert model[0].weight is weight  # cached across compiled calls, certified once
    assert circular_norm(weight) <= CERTIFIED
