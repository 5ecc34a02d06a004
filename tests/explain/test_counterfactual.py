"""Counterfactual transport on functions whose decision boundary is known exactly."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_ot.explain import counterfactual
from tests.explain.test_attribution import DistanceToPoints, unit_linear


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_boundary_transport_of_a_unit_linear_function_lands_exactly_on_the_hyperplane(dtype):
    model = unit_linear(6, dtype=dtype)
    weight, bias = model[1].weight[0], model[1].bias[0]
    x = torch.randn(16, 6, dtype=dtype) * 3
    result = counterfactual(model, x, mode="boundary", tolerance=1e-5)
    landed = result.images[:, 0]
    assert result.images.shape == (16, 1, 6)
    torch.testing.assert_close(landed @ weight + bias, torch.zeros(16, dtype=dtype), atol=1e-5, rtol=0)
    f = (x @ weight + bias).detach()
    # the nearest point of the hyperplane: x - f(x) w, at distance |f(x)|
    torch.testing.assert_close(landed, (x - f[:, None] * weight).detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(result.distances[:, 0], f.abs(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(result.margin_before, f.abs(), atol=1e-6, rtol=1e-6)  # source = prediction
    torch.testing.assert_close(result.gradient_norm, torch.ones(16, dtype=dtype))
    assert result.on_boundary.all()
    assert torch.equal(result.source, (f > 0).long())
    assert torch.equal(result.target, 1 - result.source)


def test_steps_before_the_boundary_keep_the_class_and_after_it_flip():
    model = unit_linear(5, seed=1)
    x = torch.randn(10, 5)
    result = counterfactual(model, x, mode="steps", step_sizes=[0.0, 0.5, 0.99, 1.01, 2.0])
    assert result.images.shape == (10, 5, 5)
    assert result.flipped.tolist() == [[False, False, False, True, True]] * 10
    # g decreases linearly with t: g(x - t d) = g(x) (1 - s) for relative step s
    expected = result.margin_before[:, None] * (1 - torch.tensor([0.0, 0.5, 0.99, 1.01, 2.0]))
    torch.testing.assert_close(result.margin_after, expected, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(result.images[:, 0], x)


def test_absolute_steps_walk_that_distance():
    model = unit_linear(3)
    x = torch.randn(4, 3)
    result = counterfactual(model, x, mode="steps", step_sizes=[0.1, 0.7], relative=False)
    torch.testing.assert_close(result.step_sizes, torch.tensor([[0.1, 0.7]]).expand(4, 2))
    torch.testing.assert_close(result.distances, result.step_sizes)


def test_transport_to_a_union_of_balls_reaches_the_nearest_sphere():
    centres = torch.tensor([[0.0, 0.0, 0.0], [6.0, 0.0, 0.0]])
    model = DistanceToPoints(centres, radius=1.0)
    x = torch.tensor([[0.2, 0.3, -0.1], [2.0, 2.0, 1.0], [7.0, -2.0, 0.5], [6.3, 0.1, 0.0]])
    result = counterfactual(model, x, mode="boundary", tolerance=1e-6)
    landed = result.images[:, 0]
    nearest = centres[torch.cdist(x, centres).argmin(dim=1)]
    torch.testing.assert_close((landed - nearest).norm(dim=1), torch.ones(4), atol=1e-5, rtol=0)
    # first-order distance is exact for a distance function: one straight step
    walk = counterfactual(model, x, mode="steps", step_sizes=[1.0])
    torch.testing.assert_close(walk.images[:, 0], landed, atol=1e-5, rtol=0)
    torch.testing.assert_close(result.distances[:, 0], result.margin_before.abs(), atol=1e-5, rtol=0)


def test_targeted_multiclass_transport_lands_on_the_pairwise_boundary():
    torch.manual_seed(0)
    model = unit_linear(8, out_features=4, seed=3)
    weight, bias = model[1].weight, model[1].bias
    x = torch.randn(12, 8)
    logits = model(x).detach()
    source = logits.argmax(dim=1)
    target = (source + 1) % 4
    result = counterfactual(model, x, target=target, mode="boundary", tolerance=1e-5)
    landed = result.images[:, 0]
    new_logits = landed @ weight.T + bias
    pair = new_logits.gather(1, source[:, None]) - new_logits.gather(1, target[:, None])
    torch.testing.assert_close(pair.squeeze(1), torch.zeros(12), atol=1e-5, rtol=0)
    assert torch.equal(result.source, source)
    assert torch.equal(result.target, target)
    # g = f_k - f_j has gradient w_k - w_j; its boundary distance is g / ||w_k - w_j||
    difference = (weight[source] - weight[target]).norm(dim=1)
    torch.testing.assert_close(result.gradient_norm, difference.detach())
    torch.testing.assert_close(result.step_sizes[:, 0], (result.margin_before / difference).detach())
    beyond = counterfactual(model, x, target=target, mode="steps", step_sizes=[1.5])
    reached = (beyond.images[:, 0] @ weight.T + bias).argmax(dim=1)
    assert (beyond.flipped[:, 0] == (reached != source)).all()
    assert (beyond.margin_after < 0).all()


def test_default_multiclass_target_is_the_runner_up():
    model = unit_linear(5, out_features=3)
    x = torch.randn(7, 5)
    logits = model(x).detach()
    result = counterfactual(model, x, mode="steps", step_sizes=[1.0])
    assert torch.equal(result.target, logits.topk(2, dim=1).indices[:, 1])


def test_newton_steps_converge_on_a_curved_boundary():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 32), nn.Tanh(), nn.Linear(32, 1))
    x = torch.randn(20, 4)
    result = counterfactual(model, x, mode="boundary", tolerance=1e-4, max_iterations=20)
    assert result.on_boundary.float().mean() > 0.9
    assert (model(result.images[:, 0]).detach().abs()[result.on_boundary[:, 0]] <= 1e-4).all()


def test_clamping_to_the_data_range_is_reported_when_it_stops_the_transport():
    linear = nn.Linear(2, 1)
    with torch.no_grad():
        linear.weight.copy_(torch.tensor([[1.0, 0.0]]))
        linear.bias.copy_(torch.tensor([-0.5]))
    x = torch.tensor([[0.9, 0.5], [0.6, 0.5]])
    free = counterfactual(linear, x, mode="steps", step_sizes=[2.0])
    assert free.flipped.all()
    assert not free.clamped.any()
    # in [0.45, 1] both still cross x0 = 0.5 although clamping shortens the walk past it
    clamped = counterfactual(linear, x, mode="steps", step_sizes=[0.5, 2.0], clamp=(0.45, 1.0))
    assert clamped.clamped.tolist() == [[False, True], [False, True]]
    assert clamped.flipped.tolist() == [[False, True], [False, True]]
    assert not clamped.stopped_by_clamping.any()
    assert clamped.images.min() >= 0.45
    # in [0.55, 1] the boundary x0 = 0.5 is out of reach: clamping stops both transports
    blocked = counterfactual(linear, x, mode="boundary", clamp=(0.55, 1.0))
    assert blocked.clamped.tolist() == [[True], [True]]
    assert blocked.stopped_by_clamping.tolist() == [[True], [True]]
    torch.testing.assert_close(blocked.images[:, 0, 0], torch.tensor([0.55, 0.55]))


def relu_sum() -> nn.Module:
    """``f(u, v) = relu(u) + relu(v) - 1``: its boundary is the segment from (1, 0) to (0, 1) and two rays."""
    model = nn.Sequential(nn.ReLU(), nn.Linear(2, 1))
    with torch.no_grad():
        model[1].weight.fill_(1.0)
        model[1].bias.fill_(-1.0)
    return model


def distance_to_relu_sum_boundary(x: torch.Tensor) -> torch.Tensor:
    """Exact L2 distance from each (B, 2) point to ``{relu(u) + relu(v) = 1}``."""

    def to_segment(start: torch.Tensor, end: torch.Tensor, unbounded: bool) -> torch.Tensor:
        direction = end - start
        t = ((x - start) @ direction) / direction.dot(direction)
        t = t.clamp_min(0.0) if unbounded else t.clamp(0.0, 1.0)
        return (x - (start + t[:, None] * direction)).norm(dim=1)

    corner_u, corner_v = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    return torch.stack(
        [
            to_segment(corner_u, corner_v, unbounded=False),
            to_segment(corner_u, torch.tensor([1.0, -1.0]), unbounded=True),  # u = 1, v <= 0
            to_segment(corner_v, torch.tensor([-1.0, 1.0]), unbounded=True),  # v = 1, u <= 0
        ]
    ).amin(dim=0)


def test_nearest_mode_finds_the_nearest_boundary_point_where_newton_steps_bend_away():
    model = relu_sum()
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(64, 2, generator=generator) * torch.tensor([2.0, 1.0]) + torch.tensor([1.5, -0.5])
    exact = distance_to_relu_sum_boundary(x)
    newton = counterfactual(model, x, mode="boundary", tolerance=1e-5)
    nearest = counterfactual(model, x, mode="nearest", tolerance=1e-5)
    assert nearest.on_boundary.all()
    assert nearest.images.shape == (64, 1, 2)
    found = nearest.distances[:, 0]
    assert (found >= exact - 1e-4).all()  # a point on the boundary: never closer than the exact distance
    assert (found <= newton.distances[:, 0] + 1e-6).all()
    assert (found <= 1.01 * exact).all()
    assert (newton.distances[:, 0] > 1.05 * exact).float().mean() > 0.3  # where Newton lands farther
    torch.testing.assert_close(nearest.step_sizes, newton.step_sizes)


def test_nearest_mode_on_an_affine_function_is_the_projection():
    model = unit_linear(6, seed=2)
    x = torch.randn(8, 6)
    newton = counterfactual(model, x, mode="boundary", tolerance=1e-5)
    nearest = counterfactual(model, x, mode="nearest", tolerance=1e-5)
    torch.testing.assert_close(nearest.images, newton.images, atol=1e-5, rtol=0)


def test_nearest_mode_keeps_to_the_clamp_range():
    model = relu_sum()
    x = torch.tensor([[3.0, 0.2], [2.5, -0.4]])
    result = counterfactual(model, x, mode="nearest", clamp=(-0.05, 3.0), tolerance=1e-5)
    assert result.images.min() >= -0.05
    assert result.on_boundary.all()
    # the nearest boundary point (1, 0) of the first input lies inside the range: found
    assert result.distances[0, 0] <= 1.01 * distance_to_relu_sum_boundary(x[:1])[0]
    # the second input's is (1, -0.4), outside: clamping blocks the way there and is reported
    assert result.clamped[1, 0]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mode": "walk"}, "mode"),
        ({"mode": "steps", "step_sizes": []}, "step_sizes"),
        ({"tolerance": 0.0}, "tolerance"),
        ({"clamp": (1.0, 0.0)}, "clamp"),
        ({"mode": "nearest", "refinements": -1}, "refinements"),
        ({"target": 0, "source": 0}, "differ"),
        ({"target": 5}, r"\[0, 3\)"),
    ],
)
def test_bad_arguments_are_named(kwargs, message):
    model = unit_linear(4, out_features=3)
    with pytest.raises(ValueError, match=message):
        counterfactual(model, torch.randn(2, 4), **kwargs)


def test_binary_source_and_target():
    model = unit_linear(3)
    x = torch.randn(5, 3)
    result = counterfactual(model, x, target=1, mode="steps", step_sizes=[1.0])
    assert (result.source == 0).all()
    assert (result.target == 1).all()
    with pytest.raises(ValueError, match="0 or 1"):
        counterfactual(model, x, target=2)
