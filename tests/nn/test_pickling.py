"""Every layer and backbone pickles: torch.save / torch.load, copy.deepcopy, multiprocessing (spawn)."""

from __future__ import annotations

import copy
import io
import multiprocessing
import pickle

import pytest
import torch
from torch import nn

from lightning_ot.models import LipschitzConvNet, LipschitzMLP, LipschitzResNet, unconstrained_twin
from lightning_ot.nn import (
    BjorckOrthogonalization,
    GlobalL2NormPool2d,
    GroupSort,
    InvertibleDownsampling,
    L2NormPool2d,
    LipschitzResidual,
    MaxMin,
    Normalize,
    OrthogonalConv2d,
    OrthogonalLinear,
)

MODULES = {
    "OrthogonalLinear": (lambda: OrthogonalLinear(12, 6), (12,)),
    "OrthogonalLinear no bias": (lambda: OrthogonalLinear(6, 12, bias=False), (6,)),
    "OrthogonalConv2d": (lambda: OrthogonalConv2d(2, 4, 3), (2, 6, 6)),
    "OrthogonalConv2d 1x1": (lambda: OrthogonalConv2d(4, 2, 1), (4, 6, 6)),
    "OrthogonalConv2d strided": (lambda: OrthogonalConv2d(2, 8, 3, stride=2), (2, 6, 6)),
    "BjorckOrthogonalization": (lambda: BjorckOrthogonalization(5), (4, 6)),
    "MaxMin": (lambda: MaxMin(), (4, 3, 3)),
    "GroupSort": (lambda: GroupSort(4), (8,)),
    "L2NormPool2d": (lambda: L2NormPool2d(2), (2, 6, 6)),
    "GlobalL2NormPool2d": (lambda: GlobalL2NormPool2d(), (2, 6, 6)),
    "InvertibleDownsampling": (lambda: InvertibleDownsampling(2), (2, 6, 6)),
    "Normalize": (lambda: Normalize([0.5, 0.2], [0.3, 0.4]), (2, 6, 6)),
    "LipschitzResidual": (
        lambda: LipschitzResidual(
            nn.Sequential(OrthogonalConv2d(2, 2, 3), MaxMin(), OrthogonalConv2d(2, 2, 3))
        ),
        (2, 6, 6),
    ),
    "LipschitzMLP": (lambda: LipschitzMLP(16, 3, hidden_features=(8, 8)), (1, 4, 4)),
    "LipschitzConvNet": (
        lambda: LipschitzConvNet(1, 3, image_size=8, channels=(4, 4), hidden_features=8),
        (1, 8, 8),
    ),
    "LipschitzResNet": (
        lambda: LipschitzResNet(3, 3, width_multiplier=0.125, stage_blocks=(1, 1, 1, 1)),
        (3, 32, 32),
    ),
    "twin": (lambda: unconstrained_twin(LipschitzMLP(16, 3, hidden_features=(8,))), (1, 4, 4)),
}


def _build(name: str) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    factory, shape = MODULES[name]
    module = factory()
    with torch.no_grad():  # leave the initialization, so that a silently re-initialized copy differs
        for parameter in module.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    return module.eval(), torch.randn(2, *shape)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_torch_save_load_and_deepcopy_round_trips(name: str) -> None:
    module, x = _build(name)
    expected = module(x)  # fills the weight caches: they must not travel, nor break pickling
    buffer = io.BytesIO()
    torch.save(module, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    assert torch.equal(loaded(x), expected)
    copied = copy.deepcopy(module)
    assert torch.equal(copied(x), expected)
    # a copy is independent: training it changes neither the original nor its cached weights
    for parameter in copied.parameters():
        with torch.no_grad():
            parameter.mul_(0.5)
    assert torch.equal(module(x), expected)
    module.train()
    training = module(x)
    restored = pickle.loads(pickle.dumps(module))
    assert restored.training
    assert torch.equal(restored(x), training)


def _outputs_in_child(modules: list[nn.Module], inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    torch.set_num_threads(1)
    with torch.no_grad():
        return [module(x) for module, x in zip(modules, inputs, strict=True)]


@pytest.mark.slow
def test_models_travel_to_a_spawned_process() -> None:
    names = [
        "OrthogonalLinear",
        "OrthogonalConv2d strided",
        "LipschitzMLP",
        "LipschitzConvNet",
        "LipschitzResNet",
    ]
    built = [_build(name) for name in names]
    modules, inputs = [module for module, _ in built], [x for _, x in built]
    expected = _outputs_in_child(modules, inputs)
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        outputs = pool.apply(_outputs_in_child, (modules, inputs))
    for name, output, reference in zip(names, outputs, expected, strict=True):
        torch.testing.assert_close(output, reference, rtol=0, atol=0, msg=name)
