"""Saliency, SmoothGrad and Integrated Gradients on functions whose gradients are known."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_ot.explain import class_score, explanation_mode, integrated_gradients, saliency, smoothgrad
from lightning_ot.models import LipschitzMLP


def unit_linear(in_features: int, out_features: int = 1, seed: int = 0, dtype=torch.float32) -> nn.Module:
    """``f(x) = W flatten(x) + b`` with unit-norm rows."""
    generator = torch.Generator().manual_seed(seed)
    linear = nn.Linear(in_features, out_features, dtype=dtype)
    with torch.no_grad():
        weight = torch.randn(out_features, in_features, generator=generator, dtype=dtype)
        linear.weight.copy_(weight / weight.norm(dim=1, keepdim=True))
        linear.bias.copy_(torch.randn(out_features, generator=generator, dtype=dtype))
    return nn.Sequential(nn.Flatten(), linear)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(5, 4), (3, 1, 2, 2), (2, 3, 2, 2)])
def test_saliency_of_a_unit_linear_function_is_its_weight(shape, dtype):
    model = unit_linear(int(torch.tensor(shape[1:]).prod()), dtype=dtype)
    x = torch.randn(shape, dtype=dtype)
    result = saliency(model, x)
    assert result.shape == x.shape
    assert result.dtype == dtype
    expected = model[1].weight.reshape(1, *shape[1:]).expand_as(x)
    torch.testing.assert_close(result, expected)
    assert torch.allclose(result.flatten(1).norm(dim=1), torch.ones(shape[0], dtype=dtype))


def test_saliency_multiclass_explains_the_predicted_or_given_class():
    model = unit_linear(6, out_features=3)
    x = torch.randn(8, 6)
    weight = model[1].weight
    predicted = model(x).argmax(dim=1)
    torch.testing.assert_close(saliency(model, x), weight[predicted])
    torch.testing.assert_close(saliency(model, x, target=2), weight[2].expand(8, 6))
    torch.testing.assert_close(saliency(model, x, target=torch.arange(8) % 3), weight[torch.arange(8) % 3])


def test_binary_target_gives_the_evidence_of_that_class():
    model = unit_linear(4)
    x = torch.randn(6, 4)
    weight = model[1].weight
    target = torch.tensor([0, 1, 0, 1, 1, 0])
    expected = torch.where(target[:, None] == 1, weight, -weight)
    torch.testing.assert_close(saliency(model, x, target=target), expected)


def test_channel_reductions_and_absolute_value():
    model = unit_linear(12)
    x = torch.randn(2, 3, 2, 2)
    gradient = model[1].weight.reshape(1, 3, 2, 2).expand(2, -1, -1, -1)
    torch.testing.assert_close(saliency(model, x, absolute=True), gradient.abs())
    torch.testing.assert_close(saliency(model, x, reduce_channels="sum"), gradient.sum(1, keepdim=True))
    torch.testing.assert_close(saliency(model, x, reduce_channels="mean"), gradient.mean(1, keepdim=True))
    torch.testing.assert_close(
        saliency(model, x, reduce_channels="max", absolute=True), gradient.abs().amax(1, keepdim=True)
    )
    torch.testing.assert_close(saliency(model, x, reduce_channels="norm"), gradient.norm(dim=1, keepdim=True))


class DistanceToPoints(nn.Module):
    """``f(x) = min_i ||x - p_i|| - radius``: signed distance to a union of balls, 1-Lipschitz with
    ``||grad f|| = 1`` everywhere off the centres."""

    def __init__(self, centres: torch.Tensor, radius: float) -> None:
        super().__init__()
        self.register_buffer("centres", centres)
        self.radius = radius

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        distances = torch.cdist(x.flatten(1), self.centres)
        return distances.amin(dim=1, keepdim=True) - self.radius


def test_saliency_of_a_distance_function_points_away_from_the_nearest_centre():
    centres = torch.tensor([[0.0, 0.0, 0.0], [5.0, 0.0, 0.0]])
    model = DistanceToPoints(centres, radius=1.0)
    x = torch.tensor([[0.5, 2.0, -1.0], [6.0, 1.0, 1.0], [-3.0, 0.0, 4.0]])
    nearest = centres[torch.cdist(x, centres).argmin(dim=1)]
    expected = (x - nearest) / (x - nearest).norm(dim=1, keepdim=True)
    torch.testing.assert_close(saliency(model, x), expected)


def test_saliency_works_under_inference_mode_on_inference_tensors():
    model = unit_linear(4)
    with torch.inference_mode():
        x = torch.randn(3, 4)
        result = saliency(model, x)
    torch.testing.assert_close(result, model[1].weight.expand(3, 4))


def test_parametrized_weights_are_cached_without_touching_parameter_gradients():
    model = LipschitzMLP(16, 3, hidden_features=(8,)).eval()
    x = torch.rand(4, 16)
    reference_input = x.clone().requires_grad_()
    class_score(model(reference_input)).sum().backward()
    reference = reference_input.grad
    model.zero_grad(set_to_none=True)
    with torch.no_grad():
        result = saliency(model, x)
    torch.testing.assert_close(result, reference)
    assert all(parameter.grad is None for parameter in model.parameters())
    with explanation_mode(model, x):
        first = model(x)
        second = model(x)
    torch.testing.assert_close(first, second)


def test_smoothgrad_of_a_linear_function_is_its_weight_and_of_a_ball_is_smooth():
    model = unit_linear(5, out_features=2)
    x = torch.randn(3, 5)
    torch.testing.assert_close(smoothgrad(model, x, target=1, num_samples=7), model[1].weight[1].expand(3, 5))
    ball = DistanceToPoints(torch.zeros(1, 2), radius=1.0)
    generator = torch.Generator().manual_seed(0)
    near_centre = torch.tensor([[0.01, 0.0]])
    smoothed = smoothgrad(ball, near_centre, num_samples=2000, noise_std=1.0, generator=generator)
    assert smoothed.norm() < 0.2  # the gradient is a unit vector pointing everywhere around the centre
    assert saliency(ball, near_centre).norm() == pytest.approx(1.0)


def test_integrated_gradients_is_complete_for_a_nonlinear_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))
    x = torch.randn(4, 6)
    baseline = torch.full((4, 6), 0.25)
    attribution = integrated_gradients(model, x, target=2, baseline=0.25, steps=200)
    difference = model(x)[:, 2] - model(baseline)[:, 2]
    torch.testing.assert_close(attribution.sum(dim=1), difference.detach(), atol=1e-3, rtol=1e-3)


def test_integrated_gradients_of_a_linear_function_is_weight_times_input():
    model = unit_linear(4)
    x = torch.randn(3, 4)
    torch.testing.assert_close(integrated_gradients(model, x, steps=5), x * model[1].weight)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"reduce_channels": "median"}, "reduce_channels"),
        ({"target": torch.tensor([0, 1])}, "one class index per sample"),
        ({"target": torch.tensor([0.5, 1.0, 0.0])}, "class indices"),
        ({"target": 7}, r"\[0, 3\)"),
    ],
)
def test_bad_arguments_are_named(kwargs, message):
    model = unit_linear(4, out_features=3)
    with pytest.raises((ValueError, TypeError), match=message):
        saliency(model, torch.randn(3, 4), **kwargs)


def test_bad_inputs_are_named():
    model = unit_linear(4)
    with pytest.raises(ValueError, match="`x`"):
        saliency(model, torch.randn(4))
    with pytest.raises(TypeError, match="floating-point"):
        saliency(model, torch.ones(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="num_samples"):
        smoothgrad(model, torch.randn(2, 4), num_samples=0)
    with pytest.raises(ValueError, match="steps"):
        integrated_gradients(model, torch.randn(2, 4), steps=1)
