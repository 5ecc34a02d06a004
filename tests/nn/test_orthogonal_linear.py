"""OrthogonalLinear at large widths (no NaN), its nn.Linear interface and the old state-dict layout."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_ot.nn import OrthogonalLinear, bjorck_orthonormalize
from lightning_ot.nn.linear import _normalizing_scale

F32, F64 = torch.float32, torch.float64
# min(in, out) >= 700 gave NaN weights at initialization before the normalization was renormalized
WIDTHS = [
    (700, 700, F32), (1024, 1024, F32), (784, 700, F32),
    (700, 784, F64), (4096, 768, F32), (768, 4096, F32),
]  # fmt: skip


def _singular_values(weight: torch.Tensor) -> torch.Tensor:
    matrix = weight.detach().double()
    if matrix.shape[0] > matrix.shape[1]:
        matrix = matrix.T
    return torch.linalg.eigvalsh(matrix @ matrix.T).clamp_min(0).sqrt()


def _check_orthogonal(weight: torch.Tensor, tolerance: float) -> None:
    assert torch.isfinite(weight).all()
    singular_values = _singular_values(weight)
    assert singular_values.max() <= 1 + tolerance
    # (semi-)orthogonal, not merely bounded: Björck stops within 1.5 (1e-3 / 2)^2 of 1
    assert singular_values.min() >= 1 - 1e-5


@pytest.mark.parametrize(("in_features", "out_features", "dtype"), WIDTHS)
def test_wide_layers_are_finite_and_orthogonal_at_init_and_after_perturbation(
    in_features: int, out_features: int, dtype: torch.dtype
) -> None:
    torch.manual_seed(0)
    layer = OrthogonalLinear(in_features, out_features, dtype=dtype)
    tolerance = 1e-5 if dtype == torch.float32 else 1e-10
    _check_orthogonal(layer.weight, tolerance)  # training mode: the differentiable weight
    with torch.no_grad():
        layer.weight_orig.add_(0.3 * torch.randn_like(layer.weight_orig) / in_features**0.5)
    _check_orthogonal(layer.weight, tolerance)
    layer.eval()  # the certified weight
    assert _singular_values(layer.weight).max() <= 1 + 1e-12


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("size", [4, 1024])
def test_normalizing_scale_is_a_tight_upper_bound(size: int, dtype: torch.dtype) -> None:
    # for G = I the bound of the largest eigenvalue is ||I||_F^(1/16) = m^(1/32): scale m^(-1/64)
    scale = _normalizing_scale(torch.eye(size, dtype=dtype))
    torch.testing.assert_close(scale, torch.full((1, 1), size ** (-1 / 64), dtype=dtype))
    torch.manual_seed(0)
    matrix = torch.randn(3, 40, 60, dtype=dtype) * torch.tensor([1e-8, 1.0, 1e8], dtype=dtype)[:, None, None]
    gram = matrix @ matrix.mT
    largest = torch.linalg.eigvalsh(gram.double())[:, -1]
    bound = _normalizing_scale(gram).double().flatten() ** -2
    assert (bound >= largest * (1 - 1e-5)).all()
    assert (bound <= largest * 40 ** (1 / 16) * (1 + 1e-5)).all()


def test_zero_large_and_small_matrices_stay_finite() -> None:
    assert torch.equal(bjorck_orthonormalize(torch.zeros(3, 5)), torch.zeros(3, 5))
    for scale in (1e-8, 1e8):
        torch.testing.assert_close(bjorck_orthonormalize(scale * torch.eye(4)), torch.eye(4))


def test_interface_of_nn_linear() -> None:
    layer = OrthogonalLinear(6, 4, bias=False, iterations=5)
    assert isinstance(layer, nn.Linear)
    assert (layer.in_features, layer.out_features, layer.bias) == (6, 4, None)
    assert layer.weight.shape == (4, 6)
    assert repr(layer) == "OrthogonalLinear(in_features=6, out_features=4, bias=False, iterations=5)"
    assert [name for name, _ in layer.named_parameters()] == ["weight_orig"]
    with torch.no_grad():
        layer.weight_orig.mul_(3)
    layer.reset_parameters()
    torch.testing.assert_close(layer.weight_orig @ layer.weight_orig.T, torch.eye(4))
    with pytest.raises(ValueError, match="in_features"):
        OrthogonalLinear(0, 4)


def test_state_dict_in_the_parametrized_layout_loads() -> None:
    """Checkpoints of earlier versions hold ``parametrizations.weight.original`` (torch parametrize)."""
    torch.manual_seed(0)
    model = nn.Sequential(OrthogonalLinear(8, 6), nn.ReLU(), OrthogonalLinear(6, 2))
    with torch.no_grad():
        for layer in (model[0], model[2]):
            layer.weight_orig.add_(0.2 * torch.randn_like(layer.weight_orig))
            layer.bias.normal_()
    old_layout = {}
    for key, value in model.state_dict().items():
        old_layout[key.replace("weight_orig", "parametrizations.weight.original")] = value.clone()
    assert "0.parametrizations.weight.original" in old_layout
    fresh = nn.Sequential(OrthogonalLinear(8, 6), nn.ReLU(), OrthogonalLinear(6, 2))
    fresh.load_state_dict(old_layout)  # strict
    x = torch.randn(5, 8)
    torch.testing.assert_close(fresh.eval()(x), model.eval()(x), rtol=0, atol=0)
    # the parameter order of the parametrized layout (bias first), for optimizer states
    assert [name for name, _ in model.named_parameters()] == [
        "0.bias",
        "0.weight_orig",
        "2.bias",
        "2.weight_orig",
    ]
