"""The straightness penalty: zero on affine margins, the margin left on bent ones, and it straightens."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_ot.explain import counterfactual
from lightning_ot.losses import StraightnessPenalty, straightness_penalty
from tests.explain.test_counterfactual import relu_sum


def _value(tensor: torch.Tensor) -> float:
    return float(tensor.detach())


@pytest.mark.parametrize("outputs", [1, 4])
def test_an_affine_margin_falls_exactly_as_predicted(outputs: int) -> None:
    torch.manual_seed(0)
    model = nn.Linear(5, outputs).double()
    x = torch.randn(16, 5, dtype=torch.float64)
    target = torch.randint(0, max(outputs, 2), (16,))
    assert _value(straightness_penalty(model, x, target)) < 1e-12
    # twice the distance lands as far past the boundary as x is before it
    assert _value(straightness_penalty(model, x, target, step=2.0)) < 1e-12


def test_a_bent_margin_leaves_what_it_did_not_fall() -> None:
    x = torch.tensor([[3.0, 0.2]])
    # g = 2.2, grad g = (1, 1): the first-order boundary point (1.9, -0.9) still has f = 0.9
    penalty = straightness_penalty(relu_sum(), x, torch.tensor([1]))
    torch.testing.assert_close(penalty, torch.tensor(0.9))
    # misclassified (label 0: g = -2.2 < 0): no boundary to walk to, no penalty
    assert _value(straightness_penalty(relu_sum(), x, torch.tensor([0]))) == 0.0
    # it asks for a larger fall, not a lower margin: shifting the network by a constant changes nothing
    model = relu_sum()
    straightness_penalty(model, x, torch.tensor([1])).backward()
    assert float(model[1].bias.grad) == 0.0
    torch.testing.assert_close(model[1].weight.grad, torch.tensor([[-1.1, -0.2]]))  # relu(x') - relu(x)
    # {-1, +1} labels are the same labels
    torch.testing.assert_close(straightness_penalty(relu_sum(), x, torch.tensor([1.0])), penalty)


def test_given_logits_give_the_same_penalty_and_gradients() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
    x, target = torch.randn(32, 6), torch.randint(0, 3, (32,))
    alone = straightness_penalty(model, x, target)
    (alone_grad,) = torch.autograd.grad(alone, model[0].weight)
    input = x.clone().requires_grad_(True)
    shared = straightness_penalty(model, input, target, logits=model(input))
    (shared_grad,) = torch.autograd.grad(shared, model[0].weight)
    torch.testing.assert_close(shared, alone)
    torch.testing.assert_close(shared_grad, alone_grad)
    assert _value(alone) > 0
    assert float(alone_grad.abs().sum()) > 0


def test_bad_arguments_name_what_is_expected() -> None:
    model, x = nn.Linear(3, 2), torch.randn(4, 3)
    with pytest.raises(ValueError, match="step"):
        straightness_penalty(model, x, torch.tensor([0, 1, 0, 1]), step=0.0)
    with pytest.raises(ValueError, match="step"):
        StraightnessPenalty(step=-1.0)
    with pytest.raises(ValueError, match="does not require grad"):
        straightness_penalty(model, x, torch.tensor([0, 1, 0, 1]), logits=model(x))
    with pytest.raises(ValueError, match="class indices"):
        straightness_penalty(model, x, torch.tensor([0, 1, 0]))
    with pytest.raises(ValueError, match=r"\{0, 1\}"):
        straightness_penalty(nn.Linear(3, 1), x, torch.tensor([0, 2, 0, 1]))
    assert repr(StraightnessPenalty(step=1.5)) == "StraightnessPenalty(step=1.5)"


def test_descending_the_penalty_straightens_a_bent_network() -> None:
    """Its gradient points the right way: Adam on the penalty alone takes a random ReLU network's
    margin left at the first-order boundary points close to 0, and more first-order transports of
    1.05x cross the boundary."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 1))
    x = 2 * torch.randn(256, 2)
    with torch.no_grad():
        labels = (model(x)[:, 0] > 0).long()

    def measured() -> tuple[float, float]:
        flips = counterfactual(model, x, mode="steps", step_sizes=[1.05]).flipped.float().mean()
        return _value(straightness_penalty(model, x, labels)), float(flips)

    penalty_before, flips_before = measured()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(100):
        optimizer.zero_grad()
        straightness_penalty(model, x, labels).backward()
        optimizer.step()
    penalty_after, flips_after = measured()
    assert penalty_after < 0.05 * penalty_before, (penalty_before, penalty_after)
    assert flips_after > flips_before + 0.1, (flips_before, flips_after)
