"""torch.func on every layer and backbone: jacrev, jacfwd, vjp, jvp, vmap of grad and functional_call,
each compared with plain autograd (which runs the layers' hand-written backward passes)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, jacfwd, jacrev, jvp, vjp, vmap

from lightning_ot.models import LipschitzConvNet, LipschitzMLP, LipschitzResNet
from lightning_ot.nn import (
    BlockDiagonal,
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
)

# name -> (module factory, shape of one sample)
LAYERS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "max_min": (MaxMin, (4, 3, 3)),
    "group_sort": (lambda: GroupSort(4), (8, 2, 2)),
    "l2_pool_disjoint": (lambda: L2NormPool2d(2), (2, 4, 5)),  # the odd last column is dropped
    "l2_pool_overlapping_padded": (lambda: L2NormPool2d(3, stride=2, padding=1), (2, 5, 5)),
    "global_l2_pool": (GlobalL2NormPool2d, (3, 4, 4)),
    "invertible_downsampling": (lambda: InvertibleDownsampling(2), (2, 4, 4)),
    "normalize": (lambda: Normalize([0.1, -0.2], [0.5, 2.0]), (2, 3, 3)),
    "orthogonal_linear": (lambda: OrthogonalLinear(6, 4), (6,)),
    "block_diagonal": (lambda: BlockDiagonal([OrthogonalLinear(4, 2), OrthogonalLinear(2, 2)]), (6,)),
    "orthogonal_conv": (lambda: OrthogonalConv2d(2, 4, 3), (2, 5, 5)),
    "orthogonal_conv_strided": (lambda: OrthogonalConv2d(2, 8, 3, stride=2), (2, 6, 6)),
    "residual": (
        lambda: LipschitzResidual(
            nn.Sequential(OrthogonalConv2d(4, 4, 3), MaxMin(), OrthogonalConv2d(4, 4, 3))
        ),
        (4, 4, 4),
    ),
}

MODELS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "mlp": (
        lambda: LipschitzMLP(16, 3, hidden_features=(8, 8), normalize_mean=[0.5], normalize_std=[0.25]),
        (1, 4, 4),
    ),
    "convnet": (
        lambda: LipschitzConvNet(
            1, 3, image_size=8, channels=(4, 8), hidden_features=8, normalize_mean=[0.4], normalize_std=[0.3]
        ),
        (1, 8, 8),
    ),
    "resnet": (
        lambda: LipschitzResNet(
            2,
            3,
            width_multiplier=0.125,
            stage_blocks=(1, 1),
            stage_widths=(64, 128),
            normalize_mean=[0.4, 0.5],
            normalize_std=[0.3, 0.2],
        ),
        (2, 8, 8),
    ),
}

CASES = {**LAYERS, **MODELS}
BATCH = 3


def _case(name: str, mode: str) -> tuple[nn.Module, Tensor]:
    factory, shape = CASES[name]
    torch.manual_seed(0)
    module = factory().double().train(mode == "train")
    return module, torch.randn(BATCH, *shape, dtype=torch.float64)


def _autograd_jacobian(module: nn.Module, x: Tensor) -> Tensor:
    return torch.autograd.functional.jacobian(module, x)


def _flat(jacobian: Tensor, x: Tensor) -> Tensor:
    return jacobian.reshape(-1, x.numel())


parametrize_cases = pytest.mark.parametrize("name", list(CASES))
parametrize_modes = pytest.mark.parametrize("mode", ["eval", "train"])


@parametrize_modes
@parametrize_cases
def test_jacrev_matches_autograd(name: str, mode: str) -> None:
    module, x = _case(name, mode)
    expected = _autograd_jacobian(module, x)
    torch.testing.assert_close(jacrev(module)(x), expected)
    # without grad mode the backward passes take their fast paths, which must not meet vmap's batching
    with torch.no_grad():
        torch.testing.assert_close(jacrev(module)(x), expected)


@parametrize_modes
@parametrize_cases
def test_jacfwd_and_jvp_match_autograd(name: str, mode: str) -> None:
    module, x = _case(name, mode)
    expected = _autograd_jacobian(module, x)
    torch.testing.assert_close(jacfwd(module)(x), expected)
    tangent = torch.randn_like(x)
    output, output_tangent = jvp(module, (x,), (tangent,))
    torch.testing.assert_close(output, module(x))
    torch.testing.assert_close(output_tangent.flatten(), _flat(expected, x) @ tangent.flatten())


@parametrize_modes
@parametrize_cases
def test_vjp_and_batched_gradients_match_autograd(name: str, mode: str) -> None:
    module, x = _case(name, mode)
    output, pullback = vjp(module, x)
    cotangents = torch.randn(4, *output.shape, dtype=output.dtype)
    leaf = x.clone().requires_grad_()
    reference = module(leaf)
    expected = torch.stack(
        [torch.autograd.grad(reference, leaf, cotangent, retain_graph=True)[0] for cotangent in cotangents]
    )
    torch.testing.assert_close(output, reference.detach())
    torch.testing.assert_close(pullback(cotangents[0])[0], expected[0])
    # plain autograd with batched cotangents runs the backward passes under (the older) vmap
    (batched,) = torch.autograd.grad(reference, leaf, cotangents, is_grads_batched=True)
    torch.testing.assert_close(batched, expected)


@parametrize_modes
@parametrize_cases
def test_per_sample_input_gradients_match_autograd(name: str, mode: str) -> None:
    module, x = _case(name, mode)

    def objective(sample: Tensor) -> Tensor:
        return module(sample[None]).square().sum()

    expected = []
    for sample in x:
        leaf = sample.clone().requires_grad_()
        expected.append(torch.autograd.grad(objective(leaf), leaf)[0])
    torch.testing.assert_close(vmap(grad(objective))(x), torch.stack(expected))


@parametrize_modes
@pytest.mark.parametrize("name", ["mlp", "convnet"])
def test_per_sample_parameter_gradients_through_bjorck(name: str, mode: str) -> None:
    module, x = _case(name, mode)
    labels = torch.tensor([0, 2, 1])
    parameters = {key: value.detach() for key, value in module.named_parameters()}

    def loss(parameters: dict[str, Tensor], sample: Tensor, label: Tensor) -> Tensor:
        return F.cross_entropy(functional_call(module, parameters, (sample[None],)), label[None])

    per_sample = vmap(grad(loss), in_dims=(None, 0, 0))(parameters, x, labels)
    # plain autograd in training mode (in eval mode the constrained weights are cached without a
    # graph); the two modes compute the same function
    module.train()
    for index in range(BATCH):
        module.zero_grad()
        F.cross_entropy(module(x[index : index + 1]), labels[index : index + 1]).backward()
        for key, parameter in module.named_parameters():
            assert parameter.grad is not None, key
            torch.testing.assert_close(per_sample[key][index], parameter.grad, msg=key)


@pytest.mark.parametrize("shape", [(6, 6), (4, 12), (3, 5, 6)])  # direct and Gram forms, batched
@pytest.mark.parametrize("iterations", [0, 1, 4])
def test_bjorck_under_every_transform_matches_autograd(shape: tuple[int, ...], iterations: int) -> None:
    torch.manual_seed(0)
    weight = torch.randn(shape, dtype=torch.float64, requires_grad=True)

    def orthonormalize(matrix: Tensor) -> Tensor:
        return bjorck_orthonormalize(matrix, iterations, tolerance=None)

    expected = _autograd_jacobian(orthonormalize, weight)
    torch.testing.assert_close(jacrev(orthonormalize)(weight.detach()), expected)
    torch.testing.assert_close(jacfwd(orthonormalize)(weight.detach()), expected)
    # forward-mode AD on a tensor that requires grad runs the Function's own jvp
    tangent = torch.randn_like(weight)
    with torch.autograd.forward_ad.dual_level():
        dual = orthonormalize(torch.autograd.forward_ad.make_dual(weight, tangent))
        output_tangent = torch.autograd.forward_ad.unpack_dual(dual).tangent
    torch.testing.assert_close(output_tangent.flatten(), _flat(expected, weight) @ tangent.flatten())
    # per-matrix gradients of a batch of matrices, and a Hessian (the double backward under torch.func)
    batch = torch.randn(2, *shape, dtype=torch.float64)

    def objective(matrix: Tensor) -> Tensor:
        return orthonormalize(matrix).pow(3).sum()

    expected_gradients = []
    for matrix in batch:
        leaf = matrix.clone().requires_grad_()
        expected_gradients.append(torch.autograd.grad(objective(leaf), leaf)[0])
    torch.testing.assert_close(vmap(grad(objective))(batch), torch.stack(expected_gradients))
    hessian = torch.autograd.functional.hessian(objective, weight.detach())
    torch.testing.assert_close(jacrev(jacrev(objective))(weight.detach()), hessian)


@pytest.mark.parametrize("name", ["max_min", "l2_pool_disjoint", "l2_pool_overlapping_padded"])
def test_hessians_of_activations_and_poolings_match_autograd(name: str) -> None:
    module, x = _case(name, "train")

    def objective(input: Tensor) -> Tensor:
        return module(input).pow(3).sum()

    expected = torch.autograd.functional.hessian(objective, x)
    torch.testing.assert_close(jacrev(jacrev(objective))(x), expected)
    torch.testing.assert_close(jacfwd(jacrev(objective))(x), expected)


def test_vjp_of_the_issue_reproduction() -> None:
    torch.manual_seed(0)
    model = LipschitzMLP(64, 10, (32, 32)).eval()
    x = torch.rand(4, 1, 8, 8)
    output, pullback = vjp(model, x)
    leaf = x.clone().requires_grad_()
    cotangent = torch.randn_like(output)
    expected = torch.autograd.grad(model(leaf), leaf, cotangent)[0]
    torch.testing.assert_close(pullback(cotangent)[0], expected)
