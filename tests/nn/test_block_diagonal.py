"""BlockDiagonal: independent blocks on slices of the features, max-of-blocks Lipschitz bound."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_ot.models import unconstrained_twin
from lightning_ot.nn import (
    BlockDiagonal,
    MaxMin,
    OrthogonalLinear,
    gradient_norms,
    lipschitz_audit,
    retract_weights_,
    vanilla_export,
)


def _orthogonal_blocks(count: int, in_features: int, out_features: int) -> BlockDiagonal:
    return BlockDiagonal([OrthogonalLinear(in_features, out_features) for _ in range(count)]).double()


def test_it_is_the_block_diagonal_matrix_of_its_blocks() -> None:
    torch.manual_seed(0)
    layer = _orthogonal_blocks(3, 10, 6).eval()
    x = torch.randn(5, 30, dtype=torch.float64)
    weight = torch.block_diag(*(block.weight.detach() for block in layer.blocks))
    bias = torch.cat([block.bias.detach() for block in layer.blocks])
    torch.testing.assert_close(layer(x), x @ weight.T + bias, atol=1e-12, rtol=0)
    # rows orthonormal across blocks too: a co-isometry, every output keeps a unit gradient
    torch.testing.assert_close(weight @ weight.T, torch.eye(18, dtype=torch.float64), atol=1e-8, rtol=0)
    for output in (0, 7, 17):
        norms = gradient_norms(layer, x, output_index=output)
        torch.testing.assert_close(norms, torch.ones_like(norms), atol=1e-8, rtol=0)


def test_the_audit_bound_is_the_largest_block_bound() -> None:
    torch.manual_seed(0)
    small, large = nn.Linear(4, 4, bias=False), nn.Linear(6, 3, bias=False)
    with torch.no_grad():
        small.weight.copy_(0.5 * torch.eye(4))
        large.weight.copy_(torch.linalg.qr(torch.randn(6, 3)).Q.T * torch.tensor([[2.0], [1.0], [0.3]]))
    report = lipschitz_audit(BlockDiagonal([small, large]), (10,), num_starts=8)
    assert report.upper_bound == pytest.approx(2.0, rel=1e-4)
    assert report.empirical == pytest.approx(2.0, rel=1e-2)
    assert report.unknown == []
    unknown = lipschitz_audit(
        BlockDiagonal([small, nn.Softplus()], split_sizes=[4, 6]), (10,), empirical=False
    )
    assert unknown.upper_bound is None
    assert unknown.unknown == ["blocks.1"]


def test_a_grouped_head_trains_retracts_and_exports() -> None:
    """Real steps with retraction keep the network the same function as its export and 1-Lipschitz."""
    torch.manual_seed(0)
    model = nn.Sequential(_orthogonal_blocks(4, 16, 8), MaxMin(), OrthogonalLinear(32, 5).double())
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-3)
    x, y = torch.randn(64, 64, dtype=torch.float64), torch.randint(0, 5, (64,))
    for _ in range(30):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        assert retract_weights_(model) == 5
    model.eval()
    report = lipschitz_audit(model, (64,), x[:16])
    assert report.upper_bound <= 1 + 1e-6
    assert report.empirical <= 1 + 1e-6
    assert report.gradient_norm_min == pytest.approx(1.0, abs=1e-6)
    plain = vanilla_export(model)
    torch.testing.assert_close(plain(x), model(x), atol=1e-10, rtol=0)
    assert not any(isinstance(module, BlockDiagonal | OrthogonalLinear) for module in plain.modules())
    twin = unconstrained_twin(model)
    assert [type(block) for block in twin[0].blocks] == [nn.Linear] * 4
    assert twin(x.float()).shape == (64, 5)


def test_bad_arguments_and_inputs_name_what_is_expected() -> None:
    with pytest.raises(ValueError, match="`blocks` needs at least one"):
        BlockDiagonal([])
    with pytest.raises(ValueError, match=r"`split_sizes` is needed: blocks \[1\]"):
        BlockDiagonal([nn.Linear(2, 2), nn.ReLU()])
    with pytest.raises(ValueError, match="one positive integer per block"):
        BlockDiagonal([nn.Linear(2, 2), nn.Linear(2, 2)], split_sizes=[2])
    with pytest.raises(ValueError, match="one positive integer per block"):
        BlockDiagonal([nn.Linear(2, 2)], split_sizes=[0])
    layer = BlockDiagonal([nn.Linear(2, 3), nn.Linear(4, 1)])
    assert layer(torch.randn(7, 6)).shape == (7, 4)
    with pytest.raises(ValueError, match=r"expects 6 features \(\[2, 4\]\) at dim 1"):
        layer(torch.randn(7, 5))
