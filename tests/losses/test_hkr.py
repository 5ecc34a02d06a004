"""hKR loss family: hand-computed values, definitions on random inputs, gradients, bad input."""

from __future__ import annotations

import pytest
import torch

from lightning_ot.losses import (
    HingeMarginLoss,
    HKRLoss,
    KRLoss,
    SoftHKRLoss,
    from_deel_lip,
    from_deel_torchlip,
    to_deel_lip,
    to_deel_torchlip,
)
from lightning_ot.losses import functional as F


def test_binary_hkr_hand_computed() -> None:
    # f = [2, 0.5, -1, 0.2], y = [+, +, -, -]; KR = mean(2, 0.5) - mean(-1, 0.2) = 1.25 + 0.4 = 1.65
    # hinge(m=1) = mean(ReLU(1-2), ReLU(1-0.5), ReLU(1-1), ReLU(1+0.2)) = (0 + 0.5 + 0 + 1.2) / 4 = 0.425
    logits = torch.tensor([[2.0], [0.5], [-1.0], [0.2]])
    terms = F.binary_hkr(logits, torch.tensor([1, 1, 0, 0]), margin=1.0, hinge_weight=2.0)
    torch.testing.assert_close(terms.kr, torch.tensor(1.65))
    torch.testing.assert_close(terms.hinge, torch.tensor(0.425))
    torch.testing.assert_close(terms.loss, torch.tensor(2.0 * 0.425 - 1.65))


def test_kr_is_class_balanced() -> None:
    # Three positives at 1, one negative at -1: the plain mean of y*f would weigh them 3:1.
    logits = torch.tensor([1.0, 1.0, 1.0, -1.0])
    signs = torch.tensor([1.0, 1.0, 1.0, -1.0])
    torch.testing.assert_close(F.kantorovich_rubinstein(logits, signs), torch.tensor(2.0))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_binary_hkr_matches_definition_and_gradient(dtype: torch.dtype) -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(37, 1, generator=generator, dtype=dtype, requires_grad=True)
    labels = torch.randint(0, 2, (37,), generator=generator)
    margin, weight = 0.7, 3.0
    terms = F.binary_hkr(logits, labels, margin=margin, hinge_weight=weight)

    f, y = logits[:, 0], labels.to(dtype) * 2 - 1
    kr = f[y > 0].mean() - f[y < 0].mean()
    hinge = torch.relu(margin - y * f).mean()
    torch.testing.assert_close(terms.loss, weight * hinge - kr)

    terms.loss.backward()
    n_pos, n_neg = int((y > 0).sum()), int((y < 0).sum())
    expected = torch.where(y > 0, -1.0 / n_pos, 1.0 / n_neg)
    expected = expected - weight * y * (margin - y * f > 0).to(dtype) / len(y)
    torch.testing.assert_close(logits.grad[:, 0], expected.detach())


def test_signed_and_zero_one_labels_agree() -> None:
    logits = torch.randn(16, 1)
    zero_one = torch.randint(0, 2, (16,))
    signed = zero_one * 2 - 1
    torch.testing.assert_close(HKRLoss()(logits, zero_one), HKRLoss()(logits, signed))
    torch.testing.assert_close(HKRLoss()(logits, zero_one.float()[:, None]), HKRLoss()(logits, signed))


def test_multiclass_one_vs_all_is_mean_of_binary_columns() -> None:
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(40, 5, generator=generator)
    target = torch.randint(0, 5, (40,), generator=generator)
    terms = F.multiclass_hkr(logits, target, margin=0.5, hinge_weight=4.0)
    columns = [
        F.binary_hkr(logits[:, k], (target == k).long(), margin=0.5, hinge_weight=4.0) for k in range(5)
    ]
    torch.testing.assert_close(terms.loss, torch.stack([c.loss for c in columns]).mean())
    torch.testing.assert_close(terms.kr, torch.stack([c.kr for c in columns]).mean())


def test_soft_hkr_hand_computed() -> None:
    # One sample of class 0, logits (1, 0, -1), T = 1, m = 1: w = softmax(0, -1) = (0.731, 0.269)
    logits = torch.tensor([[1.0, 0.0, -1.0]])
    terms = F.soft_hkr(logits, torch.tensor([0]), margin=1.0, hinge_weight=1.0, temperature=1.0)
    w = torch.softmax(torch.tensor([0.0, -1.0]), 0)
    kr = 1.0 - (w[0] * 0.0 + w[1] * -1.0)
    hinge = 0.0 + w[0] * 1.0 + w[1] * 0.0
    torch.testing.assert_close(terms.kr, kr)
    torch.testing.assert_close(terms.hinge, hinge)
    torch.testing.assert_close(terms.loss, hinge - kr)


def test_soft_hkr_matches_per_sample_loop_and_gradients() -> None:
    generator = torch.Generator().manual_seed(2)
    logits = torch.randn(12, 6, generator=generator, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, 6, (12,), generator=generator)
    temperature, margin, weight = 2.5, 0.3, 7.0
    terms = F.soft_hkr(logits, target, margin=margin, hinge_weight=weight, temperature=temperature)

    def naive(values: torch.Tensor) -> torch.Tensor:
        losses = []
        for row, label in zip(values, target.tolist(), strict=True):
            others = torch.cat([row[:label], row[label + 1 :]])
            w = torch.softmax(temperature * others, 0)
            kr = row[label] - (w * others).sum()
            hinge = torch.relu(margin - row[label]) + (w * torch.relu(margin + others)).sum()
            losses.append(weight * hinge - kr)
        return torch.stack(losses).mean()

    torch.testing.assert_close(terms.loss, naive(logits))
    assert torch.autograd.gradcheck(
        lambda x: F.soft_hkr(x, target, margin=margin, hinge_weight=weight, temperature=temperature).loss,
        (logits.detach().clone().requires_grad_(),),
    )


def test_soft_hkr_running_mean_is_a_checkpointed_buffer_updated_in_training_only() -> None:
    loss = SoftHKRLoss(margin=0.5, momentum=0.9)
    assert "mean_abs_logit" in loss.state_dict()
    torch.testing.assert_close(loss.mean_abs_logit, torch.tensor(0.5))
    logits = torch.full((4, 3), 2.0)
    target = torch.tensor([0, 1, 2, 0])
    loss.eval()
    loss(logits, target)
    torch.testing.assert_close(loss.mean_abs_logit, torch.tensor(0.5))
    loss.train()
    loss(logits, target)
    torch.testing.assert_close(loss.mean_abs_logit, torch.tensor(0.9 * 0.5 + 0.1 * 2.0))
    torch.testing.assert_close(loss.effective_temperature(), torch.tensor(10.0 * 0.5 / 0.65))

    restored = SoftHKRLoss(margin=0.5, momentum=0.9)
    restored.load_state_dict(loss.state_dict())
    torch.testing.assert_close(restored.mean_abs_logit, loss.mean_abs_logit)
    restored.reset_parameters()
    torch.testing.assert_close(restored.mean_abs_logit, torch.tensor(0.5))


def test_module_forms_match_functional() -> None:
    logits = torch.randn(10, 1)
    labels = torch.randint(0, 2, (10,))
    signs = labels.float() * 2 - 1
    torch.testing.assert_close(KRLoss()(logits, labels), -F.kantorovich_rubinstein(logits[:, 0], signs))
    torch.testing.assert_close(HingeMarginLoss(0.3)(logits, labels), F.hinge_margin(logits[:, 0], signs, 0.3))
    assert "margin=1.0, hinge_weight=10.0" in repr(HKRLoss())


@pytest.mark.parametrize(("alpha", "min_margin"), [(50.0, 0.2), (5.0, 1.0)])
def test_conversion_from_deel_lip(alpha: float, min_margin: float) -> None:
    logits, labels = torch.randn(32, 1), torch.randint(0, 2, (32,))
    y, f = labels.float() * 2 - 1, logits[:, 0]
    # deel-lip's definition: -KR + alpha * mean ReLU(min_margin / 2 - y f)
    theirs = -(f[y > 0].mean() - f[y < 0].mean()) + alpha * torch.relu(min_margin / 2 - y * f).mean()
    params = from_deel_lip(alpha, min_margin)
    ours = HKRLoss(params.margin, params.hinge_weight)(logits, labels)
    torch.testing.assert_close(theirs, params.scale * ours)
    assert to_deel_lip(params.margin, params.hinge_weight) == pytest.approx(
        {"alpha": alpha, "min_margin": min_margin}
    )


@pytest.mark.parametrize(("alpha", "min_margin"), [(0.98, 1.0), (0.5, 0.2)])
def test_conversion_from_deel_torchlip(alpha: float, min_margin: float) -> None:
    logits, labels = torch.randn(32, 1), torch.randint(0, 2, (32,))
    y, f = labels.float() * 2 - 1, logits[:, 0]
    # deel-torchlip's definition: alpha * hinge(min_margin / 2) - (1 - alpha) * KR
    kr = f[y > 0].mean() - f[y < 0].mean()
    theirs = alpha * torch.relu(min_margin / 2 - y * f).mean() - (1 - alpha) * kr
    params = from_deel_torchlip(alpha, min_margin)
    ours = HKRLoss(params.margin, params.hinge_weight)(logits, labels)
    torch.testing.assert_close(theirs, params.scale * ours)
    back = to_deel_torchlip(params.margin, params.hinge_weight)
    assert back == pytest.approx({"alpha": alpha, "min_margin": min_margin})


@pytest.mark.parametrize(
    ("logits", "target", "message"),
    [
        (torch.randn(4, 1), torch.tensor([0, 1, 2, 1]), "labels in"),
        (torch.randn(4, 1), torch.tensor([0, 1, -1, 1]), "mixes 0 and -1"),
        (torch.randn(4, 1), torch.tensor([0, 1, 1]), "shape"),
        (torch.tensor([[0.0], [float("nan")], [1.0], [2.0]]), torch.tensor([0, 1, 1, 0]), "non-finite"),
        (torch.randn(4, 3), torch.tensor([0, 1, 3, 1]), r"class indices in \[0, 2\]"),
        (torch.randn(4, 3), torch.tensor([0.0, 1.0, 2.0, 1.0]), "integer class indices"),
        (torch.randn(4, 3), torch.tensor([[0], [1], [2], [1]]), "shape"),
        (torch.randn(2, 3, 4), torch.tensor([0, 1]), "shape"),
    ],
)
def test_bad_input_is_a_clear_error(logits: torch.Tensor, target: torch.Tensor, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        HKRLoss()(logits, target)


def test_soft_hkr_bad_input() -> None:
    with pytest.raises(ValueError, match="C >= 2"):
        SoftHKRLoss()(torch.randn(4, 1), torch.tensor([0, 1, 0, 1]))
    with pytest.raises(ValueError, match="non-finite"):
        SoftHKRLoss()(torch.tensor([[float("inf"), 0.0]]), torch.tensor([0]))
    with pytest.raises(ValueError, match="margin"):
        SoftHKRLoss(margin=0.0)
    with pytest.raises(ValueError, match="temperature"):
        SoftHKRLoss(temperature=-1.0)
