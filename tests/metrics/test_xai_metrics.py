"""Explanation-quality metrics on cases computable by hand."""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch
from torch import nn

from lightning_ot.explain import saliency
from lightning_ot.metrics import AverageStability, Deletion, Insertion, MuFidelity, Sparseness
from lightning_ot.metrics._xai import spearman


def linear(weight: list[float], bias: float = 0.0) -> nn.Module:
    model = nn.Linear(len(weight), 1)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([weight]))
        model.bias.fill_(bias)
    return model


# ------------------------------------------------------------------------------------------------
# Sparseness
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [4, 64, 1000])
def test_gini_of_one_hot_is_n_minus_one_over_n_and_of_uniform_is_zero(n):
    one_hot = torch.zeros(1, n)
    one_hot[0, n // 3] = -5.0  # the sign does not matter
    metric = Sparseness()
    metric.update(one_hot)
    assert metric.compute().item() == pytest.approx((n - 1) / n, abs=1e-6)
    metric = Sparseness()
    metric.update(torch.full((3, n), 0.7))
    assert metric.compute().item() == pytest.approx(0.0, abs=1e-6)


def test_gini_is_scale_invariant_and_matches_the_textbook_formula():
    values = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    # G = sum_i sum_j |a_i - a_j| / (2 n sum a) = 20 / (2 * 4 * 10)
    metric = Sparseness()
    metric.update(torch.cat([values, 100 * values]))
    assert metric.compute().item() == pytest.approx(0.25)
    zero = Sparseness()
    zero.update(torch.zeros(2, 5))
    assert zero.compute().item() == 0.0


def test_gini_reduce_channels_averages_absolute_values_first():
    explanation = torch.zeros(1, 3, 2, 2)
    explanation[0, :, 0, 0] = torch.tensor([1.0, -1.0, 1.0])
    metric = Sparseness(reduce_channels=True)
    metric.update(explanation)
    assert metric.compute().item() == pytest.approx(3 / 4)


# ------------------------------------------------------------------------------------------------
# Deletion / Insertion
# ------------------------------------------------------------------------------------------------


def test_perfect_explanation_of_a_linear_model_beats_the_reversed_one():
    model = linear([4.0, 3.0, 2.0, 1.0])
    inputs = torch.ones(1, 4)
    perfect = torch.tensor([[4.0, 3.0, 2.0, 1.0]])
    reversed_order = -perfect
    results = {}
    for name, explanation in (("perfect", perfect), ("reversed", reversed_order)):
        deletion, insertion = Deletion(model, steps=4), Insertion(model, steps=4)
        deletion.update(inputs, explanation)
        insertion.update(inputs, explanation)
        results[name] = deletion.compute().item(), insertion.compute().item()
    # curves by hand: perfect deletion 10, 6, 3, 1, 0; reversed deletion 10, 9, 7, 4, 0
    assert results["perfect"][0] == pytest.approx((10 / 2 + 6 + 3 + 1 + 0 / 2) / 4)
    assert results["reversed"][0] == pytest.approx((10 / 2 + 9 + 7 + 4 + 0 / 2) / 4)
    assert results["perfect"][1] == pytest.approx((0 / 2 + 4 + 7 + 9 + 10 / 2) / 4)
    assert results["perfect"][0] < results["reversed"][0]
    assert results["perfect"][1] > results["reversed"][1]


def test_deletion_on_images_removes_every_channel_of_a_pixel_and_uses_the_baseline():
    # f = sum of the image; explanation (B, H, W) ranks pixels; removing a pixel removes its 3 channels
    model = nn.Sequential(nn.Flatten(), linear([1.0] * 12))
    inputs = torch.ones(2, 3, 2, 2)
    explanation = torch.tensor([[4.0, 3.0], [2.0, 1.0]]).expand(2, 2, 2)
    metric = Deletion(model, steps=4, baseline=0.5)
    metric.update(inputs, explanation)
    torch.testing.assert_close(metric.curve(), torch.tensor([12.0, 10.5, 9.0, 7.5, 6.0]))
    channelled = Deletion(model, steps=4, baseline=0.5)
    channelled.update(inputs, explanation[:, None].expand(2, 3, 2, 2))  # channels averaged
    torch.testing.assert_close(channelled.curve(), metric.curve())


def test_max_fraction_and_accumulation_over_batches():
    model = linear([1.0, 1.0, 1.0, 1.0])
    metric = Deletion(model, steps=2, max_fraction=0.5)
    metric.update(torch.ones(1, 4), torch.tensor([[1.0, 2.0, 3.0, 4.0]]))
    metric.update(2 * torch.ones(1, 4), torch.tensor([[1.0, 2.0, 3.0, 4.0]]))
    # sample 1: 4, 3, 2; sample 2: 8, 6, 4 -> mean curve 6, 4.5, 3
    torch.testing.assert_close(metric.curve(), torch.tensor([6.0, 4.5, 3.0]))
    assert metric.compute().item() == pytest.approx((6 / 2 + 4.5 + 3 / 2) / 2)


def test_target_selects_the_explained_logit():
    model = nn.Linear(3, 2)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 2.0]]))
        model.bias.zero_()
    metric = Deletion(model, steps=1)
    metric.update(torch.ones(1, 3), torch.tensor([[0.0, 0.0, 1.0]]), target=torch.tensor([1]))
    torch.testing.assert_close(metric.curve(), torch.tensor([2.0, 0.0]))


# ------------------------------------------------------------------------------------------------
# MuFidelity
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(3, 10), (3, 1, 8, 8), (2, 3, 12, 12)])
def test_mu_fidelity_of_the_exact_attribution_of_a_linear_model_is_one(shape):
    torch.manual_seed(0)
    features = math.prod(shape[1:])
    model = nn.Sequential(nn.Flatten(), nn.Linear(features, 1))
    inputs = torch.rand(shape)
    weight = model[1].weight.reshape(1, *shape[1:])
    exact = inputs * weight  # f(x) - f(x with S set to 0) = sum_S w x
    per_feature = exact if len(shape) == 2 else exact.mean(dim=1)  # channels are averaged anyway
    metric = MuFidelity(model, num_samples=60, seed=0)
    metric.update(inputs, exact)
    assert metric.compute().item() == pytest.approx(1.0)
    opposite = MuFidelity(model, num_samples=60, seed=0)
    opposite.update(inputs, -per_feature)
    assert opposite.compute().item() == pytest.approx(-1.0)


def test_spearman_with_ties_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    generator = torch.Generator().manual_seed(0)
    first = torch.randint(0, 4, (5, 30), generator=generator).double()
    second = first + torch.randint(0, 3, (5, 30), generator=generator)
    expected = [stats.spearmanr(a.numpy(), b.numpy())[0] for a, b in zip(first, second, strict=True)]
    torch.testing.assert_close(spearman(first, second), torch.tensor(expected, dtype=torch.float64))


def test_mu_fidelity_of_a_constant_explanation_is_zero_and_noise_is_near_zero():
    torch.manual_seed(0)
    model = linear([1.0] * 20)
    inputs = torch.rand(16, 20)
    constant = MuFidelity(model, num_samples=50, seed=0)
    constant.update(inputs, torch.zeros(16, 20))
    assert constant.compute().item() == 0.0
    noise = MuFidelity(model, num_samples=200, seed=0)
    noise.update(inputs, torch.randn(16, 20))
    assert abs(noise.compute().item()) < 0.15


def test_mu_fidelity_removes_about_the_subset_fraction():
    metric = MuFidelity(linear([1.0]), grid_size=9, subset_fraction=0.2, num_samples=400, seed=0)
    masks = metric._random_masks(torch.zeros(2, 1, 9, 9))
    assert masks.shape == (400, 2, 81)
    assert masks.float().mean().item() == pytest.approx(0.2, abs=0.01)


# ------------------------------------------------------------------------------------------------
# AverageStability
# ------------------------------------------------------------------------------------------------


def test_stability_of_the_gradient_of_a_linear_model_is_zero():
    model = linear([0.3, -0.2, 0.9])
    metric = AverageStability(partial(saliency, model), num_samples=5, seed=0)
    metric.update(torch.rand(4, 3))
    assert metric.compute().item() == pytest.approx(0.0)


@pytest.mark.parametrize(
    ("distance", "expected"),
    [
        # explanation = input, noise u ~ U[-r, r]^d: E|u|_1 = d r / 2, E|u|^2 = d r^2 / 3
        ("l1", 100 * 0.1 / 2),
        ("squared_l2", 100 * 0.1**2 / 3),
        ("l2", math.sqrt(100 * 0.1**2 / 3)),
    ],
)
def test_stability_distances_of_the_identity_explainer(distance, expected):
    metric = AverageStability(lambda inputs, target: inputs, num_samples=50, distance=distance, seed=0)
    metric.update(torch.rand(8, 100))
    assert metric.compute().item() == pytest.approx(expected, rel=0.05)


def test_stability_spearman_distance_is_zero_for_an_order_preserving_explainer():
    metric = AverageStability(lambda inputs, target: inputs * 0 + torch.arange(10.0), distance="spearman")
    metric.update(torch.rand(3, 10))
    assert metric.compute().item() == pytest.approx(0.0)


class RecordingExplainer:
    """The identity explainer, keeping every batch it was asked to explain."""

    def __init__(self) -> None:
        self.calls: list[torch.Tensor] = []

    def __call__(self, inputs: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
        self.calls.append(inputs.clone())
        return inputs


def test_stability_noise_laws_two_sided_per_input_and_xplique_one_sided_shared():
    inputs = torch.rand(3, 50)
    explainer = RecordingExplainer()
    AverageStability(explainer, num_samples=4, radius=0.1, seed=0).update(inputs)
    noise = (explainer.calls[1].view(3, 4, 50) - inputs[:, None]).flatten(1)
    assert noise.abs().max() <= 0.1 + 1e-6
    assert (noise < 0).float().mean() == pytest.approx(0.5, abs=0.1)  # two-sided
    assert not torch.allclose(noise[0], noise[1])  # a draw of its own for each input

    explainer = RecordingExplainer()
    metric = AverageStability(explainer, num_samples=4, radius=0.1, noise="xplique", seed=0)
    metric.update(inputs)
    metric.update(torch.rand(2, 50))
    first = explainer.calls[1].view(3, 4, 50) - inputs[:, None]
    second = explainer.calls[3].view(2, 4, 50) - explainer.calls[2][:, None]
    assert first.min() >= -1e-6  # U[0, radius): neighbours are never darker
    assert first.max() < 0.1
    torch.testing.assert_close(first, first[:1].expand_as(first))  # one draw shared by the batch ...
    torch.testing.assert_close(second, first[:2])  # ... and by every later batch, as Xplique's masks
    # Xplique's score with its "l2" (the L2 norm since 1.3.1) for the identity explainer: mean_s ||u_s||
    torch.testing.assert_close(metric.compute(), first[0].norm(dim=1).mean(), atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="noise"):
        AverageStability(explainer, noise="one_sided")


def test_stability_reuses_given_explanations_of_the_inputs():
    explainer = RecordingExplainer()
    inputs = torch.rand(2, 10)
    metric = AverageStability(explainer, num_samples=3, seed=0)
    metric.update(inputs, explanations=inputs)
    assert len(explainer.calls) == 1  # the neighbours only
    reference = AverageStability(RecordingExplainer(), num_samples=3, seed=0)
    reference.update(inputs)
    torch.testing.assert_close(metric.compute(), reference.compute())
    with pytest.raises(ValueError, match="explanations"):
        metric.update(inputs, explanations=inputs[:1])


def test_stability_passes_the_target_to_the_explainer():
    model = nn.Linear(4, 3)
    metric = AverageStability(partial(saliency, model), num_samples=3, seed=0)
    metric.update(torch.rand(2, 4), target=torch.tensor([2, 0]))
    assert metric.compute().item() == pytest.approx(0.0, abs=1e-6)


# ------------------------------------------------------------------------------------------------
# Errors and metric plumbing
# ------------------------------------------------------------------------------------------------


def test_bad_arguments_are_named():
    model = linear([1.0, 1.0])
    with pytest.raises(ValueError, match="steps"):
        Deletion(model, steps=0)
    with pytest.raises(ValueError, match="max_fraction"):
        Insertion(model, max_fraction=0.0)
    with pytest.raises(ValueError, match="subset_fraction"):
        MuFidelity(model, subset_fraction=1.5)
    with pytest.raises(ValueError, match="distance"):
        AverageStability(lambda x, t: x, distance="cosine")
    with pytest.raises(TypeError, match="callable"):
        Deletion("not a model")
    with pytest.raises(ValueError, match="explanations"):
        Deletion(model).update(torch.ones(2, 2), torch.ones(2, 3))
    with pytest.raises(ValueError, match="explanations"):
        MuFidelity(model).update(torch.ones(2, 1, 4, 4), torch.ones(2, 5, 5))


def test_the_model_is_not_a_submodule_of_the_metric():
    model = linear([1.0, 2.0])
    metric = Deletion(model)
    assert not any(True for _ in metric.parameters())
    assert set(metric.state_dict()) <= {"curve_sum", "count"}
    metric.reset()
    assert metric.count == 0


def test_reseed_repeats_the_random_draws_after_reset():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3), nn.Tanh(), nn.Linear(3, 3))
    inputs, explanations = torch.rand(4, 1, 4, 4), torch.randn(4, 4, 4)
    explainer = partial(saliency, model)
    for metric, update in (
        (MuFidelity(model, grid_size=4, num_samples=8, seed=3), lambda m: m.update(inputs, explanations)),
        (AverageStability(explainer, num_samples=3, seed=3), lambda m: m.update(inputs)),
    ):
        update(metric)
        first = metric.compute()
        metric.reset()
        update(metric)  # the draws go on: other subsets, other noise
        assert metric.compute() != first
        metric.reset()
        metric.reseed()
        update(metric)
        assert metric.compute() == first
    MuFidelity(model).reseed()  # without a seed: nothing to restart, torch's generator goes on
    AverageStability(explainer).reseed()
