"""Gradient-norm-preserving backbones: ||grad f_k|| = 1 by construction, kept through real training."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_ot.losses import SoftHKRLoss
from lightning_ot.models import LipschitzMLP, NormPreservingConvNet, unconstrained_twin
from lightning_ot.nn import (
    BlockDiagonal,
    OrthogonalConv2d,
    OrthogonalLinear,
    gradient_norms,
    lipschitz_audit,
    vanilla_export,
)


def _digits() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16
    return images, torch.tensor(digits.target)


def _train(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, steps: int) -> None:
    loss_fn = SoftHKRLoss(margin=0.5, hinge_weight=10.0, temperature=10.0)
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):
        index = torch.randint(0, len(images), (64,), generator=generator)
        optimizer.zero_grad()
        loss_fn(model(images[index]), labels[index]).backward()
        optimizer.step()
    model.eval()


@pytest.mark.parametrize("output", [0, 3, 9])
def test_every_output_has_unit_gradient_norm_at_initialization(output: int) -> None:
    torch.manual_seed(0)
    model = NormPreservingConvNet(1, 10, image_size=16, stage_convs=(1, 2), hidden_features=(32,)).double()
    norms = gradient_norms(model, torch.rand(8, 1, 16, 16, dtype=torch.float64), output_index=output)
    torch.testing.assert_close(norms, torch.ones_like(norms), atol=1e-6, rtol=0)


def test_zero_padding_loses_tightness_at_the_border_and_circular_does_not() -> None:
    torch.manual_seed(0)
    inputs = torch.rand(16, 1, 16, 16)
    circular = NormPreservingConvNet(1, 10, 16, stage_convs=(2, 2), kernel_size=(5, 3), hidden_features=(64,))
    zeros = NormPreservingConvNet(
        1, 10, 16, stage_convs=(2, 2), kernel_size=(5, 3), hidden_features=(64,), padding_mode="zeros"
    )
    assert gradient_norms(circular, inputs).min() > 1 - 1e-4
    assert gradient_norms(zeros, inputs).median() < 0.99


def test_circular_orthogonal_convolution_preserves_norms_and_exports() -> None:
    torch.manual_seed(0)
    conv = OrthogonalConv2d(8, 8, 5, padding_mode="circular", bias=False).double().eval()
    x = torch.randn(4, 8, 7, 7, dtype=torch.float64)
    torch.testing.assert_close(conv(x).flatten(1).norm(dim=1), x.flatten(1).norm(dim=1), atol=1e-8, rtol=0)
    plain = vanilla_export(nn.Sequential(conv))
    torch.testing.assert_close(plain(x), conv(x), atol=1e-10, rtol=0)
    with pytest.raises(ValueError, match="padding_mode"):
        OrthogonalConv2d(2, 2, 3, padding_mode="reflect")


def test_bad_arguments_name_what_is_expected() -> None:
    with pytest.raises(ValueError, match="divisible"):
        NormPreservingConvNet(1, 10, image_size=30, stage_convs=(1, 1, 1))
    with pytest.raises(ValueError, match="non-increasing"):
        NormPreservingConvNet(1, 10, image_size=8, stage_convs=(1, 1), hidden_features=(128,))
    with pytest.raises(ValueError, match="odd"):
        NormPreservingConvNet(1, 10, image_size=8, stage_convs=(1,), kernel_size=(4,))
    with pytest.raises(ValueError, match="num_outputs"):
        NormPreservingConvNet(1, 10, image_size=8, stage_convs=(1,), hidden_features=(8,))


@pytest.mark.parametrize(
    "make",
    [
        lambda: NormPreservingConvNet(
            1, 10, image_size=8, stage_convs=(2, 2), kernel_size=(3, 3), hidden_features=()
        ),
        lambda: NormPreservingConvNet(
            1,
            10,
            image_size=8,
            stage_convs=(2, 2),
            kernel_size=(3, 3),
            hidden_features=(32,),
            hidden_groups=4,
        ),
        lambda: LipschitzMLP(64, 10, hidden_features=(64,) * 6),
    ],
    ids=["convnet", "convnet-grouped-head", "mlp"],
)
def test_tight_backbones_stay_tight_after_real_training(make) -> None:
    """A short real run on the embedded 8x8 digits: accurate, within the bound, ||grad f_k|| >= 0.9."""
    torch.manual_seed(0)
    images, labels = _digits()
    model = make()
    _train(model, images[:1400], labels[:1400], steps=150)
    with torch.no_grad():
        accuracy = (model(images[1400:]).argmax(dim=1) == labels[1400:]).float().mean()
    assert accuracy > 0.85
    report = lipschitz_audit(model, (1, 8, 8), images[1400:1464])
    assert report.upper_bound <= 1 + 1e-4
    assert report.empirical <= 1 + 1e-4
    assert report.gradient_norm_p10 >= 0.9
    assert report.gradient_norm_median >= 0.9


def test_grouped_hidden_layers_are_block_diagonal_and_tight() -> None:
    torch.manual_seed(0)
    model = NormPreservingConvNet(
        1, 10, image_size=16, stage_convs=(1, 2), hidden_features=(32, 16), hidden_groups=(4, 1)
    ).double()
    grouped = [module for module in model.layers if isinstance(module, BlockDiagonal)]
    assert len(grouped) == 1
    assert grouped[0].split_sizes == [64] * 4  # 16 channels x 4 x 4 = 256 features
    assert [(block.in_features, block.out_features) for block in grouped[0].blocks] == [(64, 8)] * 4
    assert isinstance(model.layers[-3], OrthogonalLinear)
    assert model.layers[-3].in_features == 32
    for output in (0, 9):
        norms = gradient_norms(model, torch.rand(8, 1, 16, 16, dtype=torch.float64), output_index=output)
        torch.testing.assert_close(norms, torch.ones_like(norms), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="`hidden_groups` 3 must divide the layer's input width 256"):
        NormPreservingConvNet(
            1, 10, image_size=16, stage_convs=(1, 2), hidden_features=(30,), hidden_groups=3
        )
    with pytest.raises(ValueError, match="one positive integer per hidden layer"):
        NormPreservingConvNet(
            1, 10, image_size=16, stage_convs=(1, 2), hidden_features=(32, 16), hidden_groups=(2,)
        )


def test_a_widening_mlp_is_not_tight() -> None:
    """The contrast: 64 -> 256 widening layers lose gradient norm (about sqrt(64 / 256) at init)."""
    torch.manual_seed(0)
    norms = gradient_norms(LipschitzMLP(64, 10, hidden_features=(256, 256)), torch.rand(32, 1, 8, 8))
    assert norms.median() < 0.8


def test_twin_can_start_from_the_orthogonal_weights() -> None:
    torch.manual_seed(0)
    model = NormPreservingConvNet(1, 10, image_size=8, stage_convs=(1,), hidden_features=(16,)).eval()
    twin = unconstrained_twin(model, activation=nn.Identity, copy_weights=True)
    linear = [m for m in model.modules() if hasattr(m, "out_features")]
    plain = [m for m in twin.modules() if isinstance(m, nn.Linear)]
    torch.testing.assert_close(plain[0].weight, linear[0].weight.detach())
    fresh = unconstrained_twin(model)
    assert not torch.allclose(
        next(m for m in fresh.modules() if isinstance(m, nn.Linear)).weight, plain[0].weight
    )
