"""Explanations of a small OTNN really trained on scikit-learn's digits (a few seconds)."""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch

from lightning_ot.data import DigitsDataModule
from lightning_ot.explain import counterfactual, explain, integrated_gradients, saliency, smoothgrad
from lightning_ot.losses import SoftHKRLoss
from lightning_ot.metrics import (
    AverageStability,
    Deletion,
    Insertion,
    MuFidelity,
    Sparseness,
    certified_radius,
)
from lightning_ot.models import LipschitzMLP


@pytest.fixture(scope="module")
def trained() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small matrices: one thread is fastest on a shared machine
    try:
        torch.manual_seed(0)
        data = DigitsDataModule()
        data.setup("fit")
        inputs, labels = data.train_dataset.tensors
        model = LipschitzMLP(64, 10, hidden_features=(64, 64))
        loss = SoftHKRLoss(margin=0.5, hinge_weight=10.0, temperature=10.0)
        optimizer = torch.optim.Adam(model.parameters(), lr=5e-3)
        for _ in range(15):
            order = torch.randperm(len(inputs))
            for start in range(0, len(inputs), 128):
                batch = order[start : start + 128]
                optimizer.zero_grad()
                loss(model(inputs[batch]), labels[batch]).backward()
                optimizer.step()
        model.eval()
        val_inputs, val_labels = data.val_dataset.tensors
        yield model, val_inputs[:60], val_labels[:60]
    finally:
        torch.set_num_threads(threads)


def test_the_network_learned(trained):
    model, inputs, labels = trained
    assert (model(inputs).argmax(dim=1) == labels).float().mean() > 0.85


def test_boundary_transports_reach_the_boundary_or_flip(trained):
    model, inputs, _ = trained
    result = counterfactual(model, inputs, mode="boundary")
    reached = result.flipped | result.on_boundary
    assert reached.float().mean() >= 0.95
    # a jointly 1-Lipschitz network: ||grad (f_k - f_j)|| <= sqrt(2); orthogonal layers preserve it
    assert (result.gradient_norm <= math.sqrt(2) + 1e-4).all()
    assert result.gradient_norm.mean() > 1.2
    walk = counterfactual(model, inputs, mode="steps", step_sizes=[0.5, 2.0], clamp=(0.0, 1.0))
    assert walk.flipped[:, 0].float().mean() < 0.1
    assert walk.flipped[:, 1].float().mean() > 0.8


def test_nearest_boundary_points_lie_between_the_certificate_and_newton(trained):
    model, inputs, _ = trained
    logits = model(inputs).detach()
    radius = certified_radius(logits, 1.0, "joint")
    newton = counterfactual(model, inputs, mode="boundary", tolerance=1e-5)
    nearest = counterfactual(model, inputs, mode="nearest", tolerance=1e-5)
    assert nearest.on_boundary.all()
    found = nearest.distances[:, 0]
    # the certificate holds at the nearest point found (|g| <= 1e-5 there: within 1e-5 of the boundary)
    assert (found >= radius - 1e-5).all()
    assert (found <= newton.distances[:, 0] + 1e-6).all()
    assert (found < newton.distances[:, 0] * 0.99).any()
    # explain() with boundary_search="nearest" gives the same counterfactuals and their tightness
    explained = explain(model, inputs, boundary_search="nearest", tolerance=1e-5)
    torch.testing.assert_close(explained.boundary_distance, found)
    torch.testing.assert_close(explained.tightness, found / radius)
    with pytest.raises(ValueError, match="boundary_search"):
        explain(model, inputs, boundary_search="closest")


def test_metric_values_are_finite_in_range_and_favour_saliency_over_noise(trained):
    model, inputs, _ = trained
    explanations = saliency(model, inputs)
    noise = torch.randn_like(explanations, generator=torch.Generator().manual_seed(0))
    values = {}
    for name, explanation in (("saliency", explanations), ("noise", noise)):
        fidelity = MuFidelity(model, seed=0)
        fidelity.update(inputs, explanation)
        deletion, insertion = Deletion(model), Insertion(model)
        deletion.update(inputs, explanation)
        insertion.update(inputs, explanation)
        values[name] = fidelity.compute(), deletion.compute(), insertion.compute()
    for fidelity, deletion, insertion in values.values():
        assert -1 <= fidelity <= 1
        assert torch.isfinite(deletion)
        assert torch.isfinite(insertion)
    assert values["saliency"][0] > values["noise"][0] + 0.2
    assert values["saliency"][1] < values["noise"][1]
    assert values["saliency"][2] > values["noise"][2]
    assert values["saliency"][2] > values["saliency"][1]

    stability = AverageStability(partial(saliency, model), num_samples=5, seed=0)
    stability.update(inputs[:20])
    sparseness = Sparseness()
    sparseness.update(explanations)
    assert 0 <= stability.compute() < explanations[:20].flatten(1).norm(dim=1).mean() * 2
    assert 0 < sparseness.compute() < 1


def test_baselines_run_on_the_trained_network(trained):
    model, inputs, _ = trained
    smooth = smoothgrad(model, inputs[:8], num_samples=10)
    integrated = integrated_gradients(model, inputs[:8], steps=16)
    assert smooth.shape == integrated.shape == inputs[:8].shape
    assert torch.isfinite(smooth).all()
    assert torch.isfinite(integrated).all()
