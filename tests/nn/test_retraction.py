"""Retraction moves the raw matrices of orthogonal layers toward orthonormal and leaves the layers'
functions unchanged, so that training forwards need fewer Björck steps."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

import lightning_ot.nn.linear as linear_module
from lightning_ot.models import LipschitzResNet, NormPreservingConvNet
from lightning_ot.nn import (
    BjorckOrthogonalization,
    OrthogonalConv2d,
    OrthogonalLinear,
    assembled_together,
    retract_weights_,
)
from tests.nn._graph import graph_functions


def _deviation(matrix: torch.Tensor) -> float:
    """||X X^T - I||_F of the wide orientation (0 for orthonormal rows or columns)."""
    wide = matrix if matrix.shape[-2] <= matrix.shape[-1] else matrix.mT
    eye = torch.eye(wide.shape[-2], dtype=wide.dtype)
    return float((wide @ wide.mT - eye).norm(dim=(-2, -1)).max())


def _drift_(module: nn.Module, seed: int) -> None:
    """Spread the singular values of every raw matrix, as training does (condition numbers about 5)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            if parameter.ndim >= 2:
                noise = torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype)
                parameter.add_(0.3 * parameter.std() * noise).mul_(
                    1 + 0.5 * torch.rand(1, generator=generator)
                )


LAYERS = {
    "linear square": lambda: OrthogonalLinear(24, 24, dtype=torch.float64),
    "linear wide": lambda: OrthogonalLinear(40, 24, dtype=torch.float64),
    "linear tall": lambda: OrthogonalLinear(24, 40, dtype=torch.float64),
    "conv 3x3 (BCOP)": lambda: OrthogonalConv2d(8, 8, 3, dtype=torch.float64),
    "conv 3x3 widening": lambda: OrthogonalConv2d(4, 8, 3, dtype=torch.float64),
    "conv 1x1": lambda: OrthogonalConv2d(8, 4, 1, dtype=torch.float64),
    "conv 2x2 stride 2": lambda: OrthogonalConv2d(4, 16, 2, stride=2, dtype=torch.float64),
    "conv 4x4 stride 2": lambda: OrthogonalConv2d(4, 8, 4, stride=2, dtype=torch.float64),
}


@pytest.mark.parametrize("name", list(LAYERS))
def test_retraction_keeps_the_weight_and_straightens_the_raw_matrices(name: str) -> None:
    torch.manual_seed(0)
    layer = LAYERS[name]()
    _drift_(layer, seed=1)
    # BCOP's projection matrices get their bases by QR on a CPU, whatever their conditioning: left alone
    projections = getattr(layer, "projections", None)
    raw = [p for p in layer.parameters() if p.ndim >= 2 and p is not projections]
    projections_before = None if projections is None else projections.detach().clone()
    with torch.no_grad():  # the orthonormalized weight (a training forward uses retracted matrices raw)
        before_weight = layer.compute_weight()
    before_deviation = max(_deviation(parameter.detach()) for parameter in raw)
    assert before_deviation > 0.3

    assert retract_weights_(layer, steps=1) == 1
    after_one = max(_deviation(parameter.detach()) for parameter in raw)
    with torch.no_grad():
        torch.testing.assert_close(layer.compute_weight(), before_weight, atol=1e-6, rtol=0)
    assert after_one < before_deviation
    # one Björck step from the starting scale leaves every singular value <= 1: a 1-Lipschitz forward
    assert max(float(torch.linalg.matrix_norm(parameter.detach(), 2).max()) for parameter in raw) <= 1 + 1e-12

    retract_weights_(layer, steps=4)
    with torch.no_grad():
        torch.testing.assert_close(layer.compute_weight(), before_weight, atol=1e-6, rtol=0)
    assert max(_deviation(parameter.detach()) for parameter in raw) < 1e-3
    if projections is not None:
        assert torch.equal(projections.detach(), projections_before)


def test_projections_keep_their_span_when_retracted() -> None:
    """On an accelerator the projections are retracted too: Björck's steps keep each column span."""
    torch.manual_seed(0)
    layer = OrthogonalConv2d(8, 8, 3, dtype=torch.float64)
    _drift_(layer, seed=3)
    projections = layer.projections.detach()
    retracted = linear_module.retract_matrix_(projections.clone(), steps=6)
    assert _deviation(retracted) < 1e-3 < _deviation(projections)

    def projector(basis: torch.Tensor) -> torch.Tensor:
        return basis @ torch.linalg.pinv(basis)

    torch.testing.assert_close(projector(retracted), projector(projections), atol=1e-9, rtol=0)


def test_networks_compute_the_same_function_after_retraction() -> None:
    torch.manual_seed(0)
    tight = NormPreservingConvNet(
        in_channels=1, num_outputs=10, image_size=28, stage_convs=(1, 2), hidden_features=(64,)
    )
    resnet = LipschitzResNet(in_channels=1, num_outputs=10, width_multiplier=0.25, stage_blocks=(1, 1, 1, 1))
    for network, inputs in ((tight, torch.rand(4, 1, 28, 28)), (resnet, torch.rand(4, 1, 32, 32))):
        _drift_(network, seed=2)
        with torch.no_grad():  # the orthonormalized weights (training forwards use retracted ones raw)
            before = network(inputs)
        count = retract_weights_(network)
        assert count == sum(isinstance(m, OrthogonalLinear | OrthogonalConv2d) for m in network.modules()) > 3
        with torch.no_grad():
            torch.testing.assert_close(network(inputs), before, atol=2e-5, rtol=1e-5)


def test_a_bjorck_parametrized_weight_is_retracted() -> None:
    layer = nn.Linear(12, 6, dtype=torch.float64)
    parametrize.register_parametrization(layer, "weight", BjorckOrthogonalization())
    with torch.no_grad():
        layer.parametrizations.weight.original.mul_(torch.linspace(0.3, 3.0, 12, dtype=torch.float64))
    before = layer.weight.detach().clone()
    assert retract_weights_(nn.Sequential(layer, nn.ReLU()), steps=10) == 1
    assert _deviation(layer.parametrizations.weight.original.detach()) < 1e-3
    torch.testing.assert_close(layer.weight.detach(), before, atol=1e-6, rtol=0)


def _forward_steps(matrix: torch.Tensor) -> int:
    trace = linear_module._BjorckTrace()
    linear_module._bjorck_steps(matrix.detach(), 12, 1e-3, trace)
    return len(trace.steps)


def test_after_every_adam_step_a_retraction_keeps_the_forward_at_few_bjorck_steps() -> None:
    """Without retraction Adam spreads the singular values and Björck needs many steps; with it, few."""
    steps = {}
    for retract in (False, True):
        torch.manual_seed(0)
        layer = OrthogonalLinear(96, 64)
        optimizer = torch.optim.Adam(layer.parameters(), lr=5e-3)
        inputs, targets = torch.randn(128, 96), torch.randn(128, 64)
        for _ in range(30):
            loss = (layer(inputs) - targets).square().mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if retract:
                retract_weights_(layer)
        steps[retract] = _forward_steps(layer.weight_orig)
        # the eval weight is orthonormal either way: only the cost of getting there differs
        with torch.no_grad():
            assert _deviation(layer.weight) < 1e-3
        if retract:  # the training weight is the retracted matrix itself: 1-Lipschitz, near orthonormal
            assert torch.equal(layer.weight.detach(), layer.weight_orig.detach())
            assert float(torch.linalg.matrix_norm(layer.weight_orig.detach(), 2)) <= 1 + 1e-6
            assert _deviation(layer.weight_orig.detach()) < 2e-2
    assert steps[False] >= 6, steps
    assert steps[True] <= 3, steps


@pytest.mark.parametrize("name", ["linear wide", "linear tall"])
def test_after_a_retraction_training_uses_the_raw_matrix_and_the_tangent_gradient(name: str) -> None:
    """Until the next change, a retracted matrix is the training weight as it is (no Björck step),
    and its gradient is the tangent projection: the gradient of the orthonormalization there."""
    torch.manual_seed(0)
    layer = LAYERS[name]()
    _drift_(layer, seed=2)
    retract_weights_(layer, steps=8)  # near orthonormal, where the tangent projection is Björck's limit
    weight = layer.compute_weight()
    assert torch.equal(weight.detach(), layer.weight_orig.detach())
    assert "_BjorckFunctionBackward" not in graph_functions(weight)
    direction = torch.randn(weight.shape, dtype=torch.float64)
    (raw,) = torch.autograd.grad((weight * direction).sum(), layer.weight_orig)
    converged = linear_module.bjorck_orthonormalize(layer.weight_orig, 30, None)
    (through_bjorck,) = torch.autograd.grad((converged * direction).sum(), layer.weight_orig)
    torch.testing.assert_close(raw, through_bjorck, atol=1e-8, rtol=1e-6)
    # an optimizer step changes the matrix: the training forward orthonormalizes it again
    with torch.no_grad():
        layer.weight_orig.mul_(1.5)
    weight = layer.compute_weight()
    assert "_BjorckFunctionBackward" in graph_functions(weight)
    torch.testing.assert_close(weight.detach(), layer.weight_orig.detach() / 1.5, atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", ["linear square", "linear wide", "linear tall"])
@pytest.mark.parametrize("batch_shape", [(5,), (2, 3), (64,)])
def test_a_retracted_linear_layer_takes_the_projected_gradient_from_the_batch(
    name: str, batch_shape: tuple[int, ...]
) -> None:
    """For batches of fewer rows than min(in, out), the training forward computes the projected
    weight gradient from the batch (no product with the whole gradient): the same first and second
    derivatives as the linear map of the raw matrix with its gradient projected; larger batches take
    that path itself."""
    torch.manual_seed(0)
    layer = LAYERS[name]()
    _drift_(layer, seed=1)
    retract_weights_(layer, steps=8)
    x = torch.randn(*batch_shape, layer.in_features, dtype=torch.float64, requires_grad=True)
    output = layer(x)
    functions = graph_functions(output)
    from_batch = len(x.reshape(-1, layer.in_features)) < min(layer.in_features, layer.out_features)
    assert ("_TangentLinearBackward" in functions) == from_batch
    assert "_BjorckFunctionBackward" not in functions
    expected = nn.functional.linear(x, linear_module._TangentProjection.apply(layer.weight_orig), layer.bias)
    torch.testing.assert_close(output, expected, atol=1e-12, rtol=0)
    direction = torch.randn(output.shape, dtype=torch.float64)
    inputs = (x, layer.weight_orig, layer.bias)
    firsts = [torch.autograd.grad(out, inputs, direction, create_graph=True) for out in (output, expected)]
    for got, wanted in zip(*firsts, strict=True):
        torch.testing.assert_close(got, wanted, atol=1e-12, rtol=1e-10)
    seconds = [
        torch.autograd.grad(grads[0].square().sum() + grads[1].square().sum(), inputs[:2]) for grads in firsts
    ]
    for got, wanted in zip(*seconds, strict=True):
        torch.testing.assert_close(got, wanted, atol=1e-12, rtol=1e-10)
    # the output may be modified in place, as nn.Linear's (an in-place activation after it)
    for with_bias in (True, False):
        layer.bias.requires_grad_(with_bias)
        inplace = layer(x).mul_(2).relu_()
        plain = torch.relu(2 * layer(x)).detach()
        torch.testing.assert_close(inplace.detach(), plain)
        (got,) = torch.autograd.grad(inplace.sum(), layer.weight_orig)
        weight = linear_module._TangentProjection.apply(layer.weight_orig)
        reference = nn.functional.linear(x, weight, layer.bias)
        (wanted,) = torch.autograd.grad(torch.relu(2 * reference).sum(), layer.weight_orig)
        torch.testing.assert_close(got, wanted, atol=1e-12, rtol=1e-10)


def test_the_batch_side_projection_steps_aside_where_it_does_not_apply() -> None:
    """Autocast, eval mode, gradients off and torch.func transforms take the plain linear map."""
    layer = OrthogonalLinear(40, 24)
    _drift_(layer, seed=1)
    retract_weights_(layer, steps=8)
    x = torch.randn(4, 40)
    assert "_TangentLinearBackward" in graph_functions(layer(x))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output = layer(x)
    assert output.dtype == torch.bfloat16
    assert "_TangentLinearBackward" not in graph_functions(output)
    params = dict(layer.named_parameters())

    def loss(parameters: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.func.functional_call(layer, parameters, (x,)).square().sum()

    grads = torch.func.grad(loss)(params)  # transformed parameters: Björck's iteration, as before
    weight = linear_module.bjorck_orthonormalize(layer.weight_orig, layer.iterations)
    through_bjorck = nn.functional.linear(x, weight, layer.bias).square().sum()
    (expected,) = torch.autograd.grad(through_bjorck, layer.weight_orig)
    torch.testing.assert_close(grads["weight_orig"], expected, atol=1e-6, rtol=1e-5)
    with torch.no_grad():
        assert layer(x).grad_fn is None
    layer.eval()
    assert "_TangentLinearBackward" not in graph_functions(layer(x))

    class HalvedLinear(OrthogonalLinear):
        def compute_weight(self) -> torch.Tensor:
            return 0.5 * super().compute_weight()

    halved = HalvedLinear(40, 24)
    halved.load_state_dict(layer.state_dict())  # retracted, as the layer
    output = halved(x)
    assert "_TangentLinearBackward" not in graph_functions(output)
    torch.testing.assert_close(output, x @ (0.5 * halved.weight_orig).T.detach() + halved.bias.detach())


def test_the_deviation_bound_of_a_retraction_holds_and_spares_the_gram_check() -> None:
    """The bound that the retraction returns, from the Gram matrix before its last step, is above the
    measured root mean square of lambda - 1 after it, and close enough to mark near-orthonormal
    matrices without computing their Gram matrix again."""
    generator = torch.Generator().manual_seed(0)
    for spread in (0.002, 0.02, 0.2, 0.6):
        left = torch.linalg.qr(torch.randn(48, 48, generator=generator, dtype=torch.float64)).Q
        right = torch.linalg.qr(torch.randn(80, 48, generator=generator, dtype=torch.float64)).Q
        singular_values = 1 + spread * (2 * torch.rand(48, generator=generator, dtype=torch.float64) - 1)
        for steps in (1, 2):
            matrix = left @ torch.diag(singular_values) @ right.T
            bound = linear_module._retract(matrix, steps)
            gram = matrix @ matrix.T
            measured = float((gram - torch.eye(48, dtype=torch.float64)).norm()) / 48**0.5
            assert measured <= bound * (1 + 1e-9) + 1e-12, (spread, steps)
            if spread <= 0.02:
                assert bound <= linear_module.MAX_RETRACTED_DEVIATION
    layer = OrthogonalLinear(40, 24)
    _drift_(layer, seed=0)
    retract_weights_(layer, steps=1)  # far from orthonormal: the bound is loose, the Gram check decides
    assert not layer._retracted.fresh(layer.weight_orig)
    retract_weights_(layer, steps=1)
    retract_weights_(layer, steps=1)
    assert layer._retracted.fresh(layer.weight_orig)


def test_retracted_convolutions_skip_bjorck_in_training() -> None:
    for name in ("conv 3x3 (BCOP)", "conv 2x2 stride 2", "conv 4x4 stride 2"):
        layer = LAYERS[name]()
        _drift_(layer, seed=4)
        assert "_BjorckFunctionBackward" in graph_functions(layer.compute_weight())
        retract_weights_(layer, steps=8)
        kernel = layer.compute_weight()
        assert "_BjorckFunctionBackward" not in graph_functions(kernel), name
        with torch.no_grad():
            torch.testing.assert_close(kernel.detach(), layer.compute_weight(), atol=1e-6, rtol=0)


def test_copies_of_a_retracted_layer_orthonormalize_their_own_matrices() -> None:
    import copy
    import pickle

    layer = OrthogonalLinear(24, 40, dtype=torch.float64)
    _drift_(layer, seed=3)
    retract_weights_(layer, steps=1)  # still far from orthonormal: the forward runs Björck's iteration
    assert "_BjorckFunctionBackward" in graph_functions(layer.compute_weight())
    retract_weights_(layer, steps=8)
    assert torch.equal(layer.compute_weight().detach(), layer.weight_orig.detach())
    for duplicate in (copy.deepcopy(layer), pickle.loads(pickle.dumps(layer))):
        assert "_BjorckFunctionBackward" in graph_functions(duplicate.compute_weight())


def test_state_dicts_carry_the_retraction_so_that_a_resume_trains_alike() -> None:
    for make in (LAYERS["linear wide"], LAYERS["conv 3x3 (BCOP)"], LAYERS["conv 2x2 stride 2"]):
        layer = make()
        assert "retracted" not in layer.state_dict()  # nothing new unless retracted
        _drift_(layer, seed=5)
        retract_weights_(layer, steps=8)
        state = layer.state_dict()
        assert bool(state["retracted"])
        fresh = make()
        fresh.load_state_dict(state)  # strict: the key is known
        assert "_BjorckFunctionBackward" not in graph_functions(fresh.compute_weight())
        torch.testing.assert_close(fresh.compute_weight(), layer.compute_weight())
        plain = make()
        plain.load_state_dict({key: value for key, value in state.items() if key != "retracted"})
        assert "_BjorckFunctionBackward" in graph_functions(plain.compute_weight())
        with torch.no_grad():
            layer.bias.add_(0.0)  # a bias is not retracted: the flag stays
        assert "retracted" in layer.state_dict()
        matrix = layer._sources()[0] if isinstance(layer, OrthogonalConv2d) else layer.weight_orig
        with torch.no_grad():
            matrix.copy_(matrix.clone())  # the same values written again (as DDP's broadcast does)
        assert "retracted" in layer.state_dict()
        with torch.no_grad():
            matrix.mul_(1.01)
        assert "retracted" not in layer.state_dict()  # changed: no longer what was retracted
        assert "_BjorckFunctionBackward" in graph_functions(layer.compute_weight())


@pytest.mark.parametrize(("spread", "quick_start"), [(0.05, True), (0.3, None), (0.6, False)])
def test_a_near_orthonormal_matrix_is_retracted_from_its_gram_matrix_alone(
    spread: float, quick_start: bool | None
) -> None:
    """The cheap start (no matrix powers) is taken when the Gram matrix bounds the top singular
    value closely enough, and every singular value still ends <= 1 (the retraction's guarantee)."""
    generator = torch.Generator().manual_seed(0)
    left = torch.linalg.qr(torch.randn(64, 64, generator=generator, dtype=torch.float64)).Q
    right = torch.linalg.qr(torch.randn(96, 64, generator=generator, dtype=torch.float64)).Q
    singular_values = 1 + spread * (2 * torch.rand(64, generator=generator, dtype=torch.float64) - 1)
    matrix = left @ torch.diag(singular_values) @ right.T  # 64 x 96
    _, enough = linear_module._scale_from_gram_alone(matrix @ matrix.T)
    if quick_start is not None:  # far from orthonormal, the powers are needed
        assert bool(enough) == quick_start
    retracted = linear_module.retract_matrix_(matrix.clone())
    after = torch.linalg.svdvals(retracted)
    assert float(after.max()) <= 1 + 1e-12
    assert float((1 - after).abs().max()) < float((1 - singular_values).abs().max())
    # the polar factor, hence the layer's weight, is unchanged
    torch.testing.assert_close(
        linear_module.bjorck_orthonormalize(retracted, 30, None),
        linear_module.bjorck_orthonormalize(matrix, 30, None),
        atol=1e-9,
        rtol=0,
    )


def test_bad_steps_are_refused() -> None:
    with pytest.raises(ValueError, match="steps"):
        retract_weights_(OrthogonalLinear(4, 4), steps=0)
    with pytest.raises(ValueError, match="steps"):
        linear_module.retract_matrix_(torch.eye(3), steps=0)
    # a module without orthogonal layers is left alone
    plain = nn.Linear(3, 3)
    before = plain.weight.detach().clone()
    assert retract_weights_(plain) == 0
    assert torch.equal(plain.weight, before)


def test_kernels_assembled_together_are_each_layers_own() -> None:
    """Inside ``assembled_together``, the retracted stride-1 kernels of one configuration come from
    one batched pass, with each layer's own values and gradients; anything else is left alone."""
    torch.manual_seed(0)
    same = [OrthogonalConv2d(8, 8, 3, dtype=torch.float64) for _ in range(3)]
    alone = OrthogonalConv2d(8, 8, 5, dtype=torch.float64)  # its own configuration: no batch
    strided = OrthogonalConv2d(4, 16, 2, stride=2, dtype=torch.float64)
    network = nn.Sequential(*same, alone, strided)
    _drift_(network, seed=6)
    retract_weights_(network, steps=8)
    own = [layer.compute_weight() for layer in same]
    with assembled_together(network):
        kernels = [layer.weight for layer in same]
        assert all("StackBackward0" in graph_functions(kernel) for kernel in kernels)
        assert "StackBackward0" not in graph_functions(alone.weight)
        assert "StackBackward0" not in graph_functions(strided.weight)
    assert all(layer._assembled is None for layer in same)
    directions = [torch.randn(kernel.shape, dtype=torch.float64) for kernel in kernels]
    sources = [parameter for layer in same for parameter in (layer.orthogonal, layer.projections)]
    together = torch.autograd.grad(
        sum((k * d).sum() for k, d in zip(kernels, directions, strict=True)), sources
    )
    apart = torch.autograd.grad(sum((k * d).sum() for k, d in zip(own, directions, strict=True)), sources)
    for kernel, expected in zip(kernels, own, strict=True):
        torch.testing.assert_close(kernel, expected, atol=1e-12, rtol=0)
    for got, expected in zip(together, apart, strict=True):
        torch.testing.assert_close(got, expected, atol=1e-12, rtol=1e-10)
    with assembled_together(network):
        with torch.no_grad():
            same[0].projections.mul_(1.0)  # a change (version bump): that layer computes its own again
        assert "StackBackward0" not in graph_functions(same[0].weight)
        assert "StackBackward0" in graph_functions(same[1].weight)


def test_assembled_kernels_need_retracted_matrices_and_a_training_forward() -> None:
    torch.manual_seed(0)
    network = nn.Sequential(*(OrthogonalConv2d(8, 8, 3, dtype=torch.float64) for _ in range(2)))
    _drift_(network, seed=7)
    with assembled_together(network):  # not retracted: Björck's iteration, layer by layer
        assert "_BjorckFunctionBackward" in graph_functions(network[0].weight)
    retract_weights_(network, steps=8)
    network.eval()
    with assembled_together(network):
        assert network[0]._assembled is None
    network.train()
    with torch.no_grad(), assembled_together(network):
        assert network[0]._assembled is None


def test_the_tight_convnet_trains_alike_with_its_kernels_assembled_together() -> None:
    torch.manual_seed(0)
    model = NormPreservingConvNet(1, 10, 28, stage_convs=[1, 2], kernel_size=[3, 3], hidden_features=(64,))
    model = model.double()
    _drift_(model, seed=8)
    retract_weights_(model, steps=8)
    x = torch.rand(4, 1, 28, 28, dtype=torch.float64)
    parameters = list(model.parameters())
    together = model(x)  # through `assembled_together`
    apart = model.layers(x)
    assert "StackBackward0" in graph_functions(together)
    assert "StackBackward0" not in graph_functions(apart)
    torch.testing.assert_close(together, apart, atol=1e-12, rtol=0)
    for got, expected in zip(
        torch.autograd.grad(together.square().sum(), parameters),
        torch.autograd.grad(apart.square().sum(), parameters),
        strict=True,
    ):
        torch.testing.assert_close(got, expected, atol=1e-10, rtol=1e-8)


@pytest.mark.parametrize("steps", [1, 2])
@pytest.mark.parametrize("shape", [(48, 80), (80, 48), (512, 784), (3, 16, 16)])
def test_the_retraction_is_the_bjorck_iteration_from_its_starting_scale(
    shape: tuple[int, ...], steps: int
) -> None:
    """The retraction's own loop (symmetric block Gram products, in-place updates, the scale folded
    into the step) computes Björck's steps ``X <- 1.5 X - 0.5 X X^T X`` from its starting scale."""
    generator = torch.Generator().manual_seed(0)
    matrix = torch.randn(shape, generator=generator, dtype=torch.float64) / shape[-1] ** 0.5
    retracted, _ = linear_module._retracted(matrix, steps)
    wide = matrix if shape[-2] <= shape[-1] else matrix.mT
    reference = wide * linear_module._quick_starting_scale(wide @ wide.mT)
    for _ in range(steps):
        reference = 1.5 * reference - 0.5 * reference @ reference.mT @ reference
    torch.testing.assert_close(retracted, reference if shape[-2] <= shape[-1] else reference.mT)


@pytest.mark.parametrize("rows", [256, 257, 510, 512])
def test_the_blocked_gram_product_is_the_full_one_and_symmetric(rows: int) -> None:
    matrix = torch.randn(rows, 300, generator=torch.Generator().manual_seed(rows))
    gram = linear_module._gram(matrix)
    torch.testing.assert_close(gram, matrix @ matrix.T, atol=1e-4, rtol=1e-5)
    assert torch.equal(gram, gram.T)


def test_layers_retracted_together_end_as_each_retracted_alone() -> None:
    """``retract_weights_`` batches the matrices of one shape: every matrix and mark is what the
    layer's own ``retract_`` gives, including a batch where only some matrices are near orthonormal
    (each gets the starting scale it gets alone); a subclass that overrides ``retract_`` is called."""
    calls: list[int] = []

    class Counted(OrthogonalLinear):
        def retract_(self, steps: int = 1) -> None:
            calls.append(steps)
            super().retract_(steps)

    def network() -> nn.Module:
        torch.manual_seed(0)
        layers = [OrthogonalLinear(24, 24, dtype=torch.float64) for _ in range(4)]
        layers += [OrthogonalConv2d(8, 8, 3, dtype=torch.float64) for _ in range(3)]
        layers += [Counted(24, 24, dtype=torch.float64)]
        return nn.ModuleList(layers)

    together, alone = network(), network()
    for model in (together, alone):
        _drift_(model[0], seed=1)  # far from orthonormal: its batch needs the full starting scale
        _drift_(model[4], seed=2)
    assert retract_weights_(together, steps=1) == 8
    assert calls == [1]
    for layer in alone:
        layer.retract_(1)
    for first, second in zip(together, alone, strict=True):
        for name, parameter in first.named_parameters():
            torch.testing.assert_close(parameter, dict(second.named_parameters())[name], atol=1e-12, rtol=0)
        for parameter, twin in zip(
            first._retractable_matrices(), second._retractable_matrices(), strict=True
        ):
            assert first._retracted.fresh(parameter) == second._retracted.fresh(twin)
    assert not together[0]._retracted.fresh(together[0].weight_orig)
    assert together[1]._retracted.fresh(together[1].weight_orig)


def test_a_mark_reuses_its_copy_of_the_retracted_values() -> None:
    layer = OrthogonalLinear(32, 32)
    retract_weights_(layer)
    copy = layer._retracted._marks[id(layer.weight_orig)][2]
    with torch.no_grad():
        layer.weight_orig.add_(1e-4)
    retract_weights_(layer)
    again = layer._retracted._marks[id(layer.weight_orig)][2]
    assert again.data_ptr() == copy.data_ptr()
    assert torch.equal(again, layer.weight_orig.detach())
    with torch.no_grad():
        layer.weight_orig.copy_(layer.weight_orig.clone())  # the same values written again
    assert layer._retracted.fresh(layer.weight_orig)
