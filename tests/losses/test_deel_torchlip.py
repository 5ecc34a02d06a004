"""The conversions to and from deel-torchlip, checked against deel-torchlip itself (the ``test`` extra
installs deel-torchlip 1.0.5; without it these tests are skipped)."""

from __future__ import annotations

import warnings

import pytest
import torch

from lightning_ot.losses import SoftHKRLoss, from_deel_torchlip, to_deel_torchlip
from lightning_ot.losses.functional import hinge_margin, kantorovich_rubinstein, multiclass_hkr

torchlip = pytest.importorskip("deel.torchlip.modules")

MARGIN, HINGE_WEIGHT, TEMPERATURE, CLASSES = 0.5, 5.0, 10.0, 10


def batches(count: int, scale: float, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    for _ in range(count):
        logits = torch.randn(64, CLASSES, generator=generator) * scale
        target = torch.randint(0, CLASSES, (64,), generator=generator)
        yield logits, target, torch.nn.functional.one_hot(target, CLASSES).float()


def soft_pair(torchlip_temperature: float) -> tuple[SoftHKRLoss, torch.nn.Module, float]:
    ours = SoftHKRLoss(margin=MARGIN, hinge_weight=HINGE_WEIGHT, temperature=TEMPERATURE).train()
    converted = to_deel_torchlip(MARGIN, HINGE_WEIGHT, TEMPERATURE)
    theirs = torchlip.SoftHKRMulticlassLoss(
        alpha=converted["alpha"], min_margin=converted["min_margin"], temperature=torchlip_temperature
    )
    with torch.no_grad():
        ours.mean_abs_logit.fill_(converted["min_margin"])  # deel-torchlip's running mean starts there
    return ours, theirs, 1.0 - converted["alpha"]


def test_converted_soft_hkr_equals_deel_torchlips_at_steady_state():
    converted = to_deel_torchlip(MARGIN, HINGE_WEIGHT, TEMPERATURE)
    assert converted["temperature"] == TEMPERATURE / 2
    back = from_deel_torchlip(converted["alpha"], converted["min_margin"], converted["temperature"])
    assert back.temperature == pytest.approx(TEMPERATURE)
    assert (back.margin, back.hinge_weight) == pytest.approx((MARGIN, HINGE_WEIGHT))

    ours, theirs, scale = soft_pair(converted["temperature"])
    for logits, target, one_hot in batches(200, scale=2.0):  # mean |f| ~ 1.6 >= min_margin = 1
        logits.requires_grad_(True)
        value = ours(logits, target)
        (gradient,) = torch.autograd.grad(value, logits)
        reference = theirs(logits, one_hot)
        (reference_gradient,) = torch.autograd.grad(reference, logits)
        torch.testing.assert_close(scale * value, reference, rtol=2e-6, atol=1e-7)
        torch.testing.assert_close(scale * gradient, reference_gradient, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(ours.mean_abs_logit, theirs.current_mean[0])
    # the effective temperatures: deel-torchlip's is t * M / max(mu, M)
    theirs_temperature = theirs.temperature / max(float(theirs.current_mean), converted["min_margin"])
    assert float(ours.effective_temperature()) == pytest.approx(theirs_temperature, rel=1e-6)


def test_the_same_temperature_number_is_half_deel_torchlips():
    ours, theirs, scale = soft_pair(TEMPERATURE)  # not converted
    differences = []
    for logits, target, one_hot in batches(50, scale=2.0):
        differences.append(float((scale * ours(logits, target) - theirs(logits, one_hot)).abs()))
    theirs_temperature = theirs.temperature / max(float(theirs.current_mean), 2 * MARGIN)
    assert float(ours.effective_temperature()) / theirs_temperature == pytest.approx(0.5, rel=1e-6)
    assert max(differences) > 1e-3  # so the value differs


def test_below_the_margin_deel_torchlip_caps_its_temperature_and_the_losses_part():
    converted = to_deel_torchlip(MARGIN, HINGE_WEIGHT, TEMPERATURE)
    ours, theirs, scale = soft_pair(converted["temperature"])
    for logits, target, one_hot in batches(300, scale=0.2):  # mean |f| ~ 0.16 < min_margin
        value, reference = scale * ours(logits, target), theirs(logits, one_hot)
    assert float(theirs.current_mean) < converted["min_margin"]
    theirs_temperature = theirs.temperature / converted["min_margin"]  # held at t
    assert theirs_temperature == pytest.approx(converted["temperature"])
    assert float(ours.effective_temperature()) > 4 * theirs_temperature
    assert abs(float(value - reference)) > 1e-4


def test_deel_torchlips_multiclass_hkr_weighs_the_true_class_by_c_minus_1():
    alpha, min_margin = 0.8333, 1.0
    converted = from_deel_torchlip(alpha, min_margin)
    logits, target, one_hot = next(batches(1, scale=1.0, seed=3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = torchlip.HKRMulticlassLoss(alpha=alpha, min_margin=min_margin)(logits, one_hot)
    signs = 2 * one_hot - 1
    # deel-torchlip: (1 - alpha) * (hinge_weight * H - KR), H the column mean of a hinge whose true
    # class counts C - 1 times, KR the mean over columns of the class-balanced KR
    hinge = torch.relu(converted.margin - signs * logits) * torch.where(one_hot > 0, CLASSES - 1.0, 1.0)
    formula = converted.scale * (
        converted.hinge_weight * hinge.mean() - kantorovich_rubinstein(logits, signs)
    )
    torch.testing.assert_close(formula, reference, rtol=1e-6, atol=1e-7)
    # this project's one-vs-all hKR weighs the columns alike: the "converted" values differ by ~44 %
    ours = converted.scale * multiclass_hkr(logits, target, converted.margin, converted.hinge_weight).loss
    assert float(ours) == pytest.approx(
        float(converted.scale * (converted.hinge_weight * hinge_margin(logits, signs, converted.margin)
                                 - kantorovich_rubinstein(logits, signs)))
    )  # fmt: skip
    assert abs(float(ours / reference) - 1) > 0.3
