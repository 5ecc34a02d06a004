"""Certified radii against exact and brute-force answers on linear models."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_ot.metrics import CertifiedRobustAccuracy, certified_radius, predicted_labels


def _unit(vector: torch.Tensor) -> torch.Tensor:
    return vector / vector.norm()


def test_binary_radius_is_the_exact_distance_for_a_unit_linear_model() -> None:
    generator = torch.Generator().manual_seed(0)
    w, b = _unit(torch.randn(5, generator=generator, dtype=torch.float64)), 0.3
    x = torch.randn(100, 5, generator=generator, dtype=torch.float64)
    logits = x @ w + b
    radius = certified_radius(logits[:, None])
    exact = (x @ w + b).abs()  # distance to the hyperplane w.x + b = 0 with ||w|| = 1
    torch.testing.assert_close(radius, exact)
    # Scaled model: the same certificate for L = 3.
    torch.testing.assert_close(certified_radius(3 * logits, lipschitz=3.0), exact)


def test_multiclass_radius_is_sound_against_brute_force_on_a_linear_model() -> None:
    generator = torch.Generator().manual_seed(1)
    weight = torch.randn(4, 6, generator=generator, dtype=torch.float64)
    lipschitz = float(torch.linalg.matrix_norm(weight, ord=2))
    x = torch.randn(50, 6, generator=generator, dtype=torch.float64)
    logits = x @ weight.T
    radius = certified_radius(logits, lipschitz=lipschitz)
    top = logits.argmax(1)

    # Exact minimal adversarial distance of a linear classifier: min_j (f_k - f_j) / ||w_k - w_j||.
    exact = torch.stack(
        [
            min(
                (logits[i, top[i]] - logits[i, j]) / (weight[top[i]] - weight[j]).norm()
                for j in range(4)
                if j != top[i]
            )
            for i in range(50)
        ]
    )
    assert bool((radius <= exact + 1e-12).all())
    # Brute force: 2,000 random perturbations of norm just below the radius never change the prediction.
    directions = torch.nn.functional.normalize(
        torch.randn(2000, 6, generator=generator, dtype=torch.float64), dim=1
    )
    for i in range(0, 50, 5):
        perturbed = x[i] + 0.999 * radius[i] * directions
        assert bool(((perturbed @ weight.T).argmax(1) == top[i]).all())


def test_multiclass_radius_is_exact_for_orthonormal_rows() -> None:
    # Orthonormal rows: L = 1 and every ||w_k - w_j|| = sqrt(2), so the certificate is the exact distance.
    generator = torch.Generator().manual_seed(2)
    weight = torch.linalg.qr(torch.randn(6, 3, generator=generator, dtype=torch.float64)).Q.T
    x = torch.randn(30, 6, generator=generator, dtype=torch.float64)
    logits = x @ weight.T
    top2 = logits.topk(2, dim=1)
    exact = (top2.values[:, 0] - top2.values[:, 1]) / (
        weight[top2.indices[:, 0]] - weight[top2.indices[:, 1]]
    ).norm(dim=1)
    torch.testing.assert_close(certified_radius(logits), exact)
    # Moving exactly that far along w_j - w_k reaches the boundary between the two classes.
    direction = weight[top2.indices[:, 1]] - weight[top2.indices[:, 0]]
    moved = x + 1.001 * exact[:, None] * direction / direction.norm(dim=1, keepdim=True)
    assert bool(((moved @ weight.T).argmax(1) != top2.indices[:, 0]).all())


def test_per_output_mode_uses_two_l() -> None:
    logits = torch.tensor([[3.0, 1.0]])
    assert certified_radius(logits, output_lipschitz="per_output").item() == pytest.approx(1.0)
    assert certified_radius(logits).item() == pytest.approx(2.0 / math.sqrt(2))
    with pytest.raises(ValueError, match="output_lipschitz"):
        certified_radius(logits, output_lipschitz="bad")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="lipschitz"):
        certified_radius(logits, lipschitz=0.0)


def test_half_precision_logits_give_float32_radii() -> None:
    radius = certified_radius(torch.tensor([[1.0, 0.25]], dtype=torch.bfloat16))
    assert radius.dtype == torch.float32


def test_certified_robust_accuracy_accumulates_and_matches_manual_count() -> None:
    generator = torch.Generator().manual_seed(3)
    metric = CertifiedRobustAccuracy(eps=[0.0, 0.2, 0.5], lipschitz=2.0)
    all_logits, all_target = [], []
    for _ in range(3):
        logits = torch.randn(20, 4, generator=generator)
        target = torch.randint(0, 4, (20,), generator=generator)
        metric.update(logits, target)
        all_logits.append(logits)
        all_target.append(target)
    logits, target = torch.cat(all_logits), torch.cat(all_target)
    correct = predicted_labels(logits) == target
    radius = certified_radius(logits, lipschitz=2.0)
    expected = torch.tensor(
        [
            correct.float().mean(),
            (correct & (radius > 0.2)).float().mean(),
            (correct & (radius > 0.5)).float().mean(),
        ]
    )
    torch.testing.assert_close(metric.compute(), expected)
    metric.reset()
    metric.update(torch.tensor([[0.5], [-0.1], [0.05]]), torch.tensor([1, -1, 0]))
    torch.testing.assert_close(metric.compute(), torch.tensor([2 / 3, 1 / 3, 0.0]))


def test_certified_robust_accuracy_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="eps"):
        CertifiedRobustAccuracy(eps=[])
    metric = CertifiedRobustAccuracy()
    with pytest.raises(ValueError, match="labels"):
        metric.update(torch.randn(3, 2), torch.tensor([0, 1]))
