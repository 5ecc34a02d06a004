"""Every loss parameter is checked for finiteness and range, with the same message in the module and
the functional forms."""

from __future__ import annotations

import functools
import math

import pytest
import torch

from lightning_ot.losses import HingeMarginLoss, HKRLoss, SoftHKRLoss
from lightning_ot.losses import functional as F

NAN, INF = math.nan, math.inf
LOGITS, TARGET = torch.tensor([[1.0, -1.0], [-1.0, 1.0]]), torch.tensor([0, 1])
BINARY_LOGITS, BINARY_TARGET = torch.tensor([1.0, -1.0]), torch.tensor([1, 0])

# (name, bad values): each must be refused by every form that takes the parameter.
BAD = {
    "margin": [0.0, -1.0, NAN, INF],
    "hinge_weight": [-1.0, NAN, INF],
    "temperature": [0.0, -2.0, NAN, INF],
    "momentum": [-0.1, 1.0, NAN],
}
FORMS = {
    "HKRLoss": (HKRLoss, ("margin", "hinge_weight")),
    "SoftHKRLoss": (SoftHKRLoss, ("margin", "hinge_weight", "temperature", "momentum")),
    "HingeMarginLoss": (HingeMarginLoss, ("margin",)),
    "binary_hkr": (functools.partial(F.binary_hkr, BINARY_LOGITS, BINARY_TARGET), ("margin", "hinge_weight")),
    "multiclass_hkr": (functools.partial(F.multiclass_hkr, LOGITS, TARGET), ("margin", "hinge_weight")),
    "soft_hkr": (functools.partial(F.soft_hkr, LOGITS, TARGET), ("margin", "hinge_weight", "temperature")),
    "hinge_margin": (
        functools.partial(F.hinge_margin, BINARY_LOGITS, torch.tensor([1.0, -1.0])),
        ("margin",),
    ),
    "soft_hkr_temperature": (
        functools.partial(F.soft_hkr_temperature, mean_abs_logit=1.0),
        ("temperature", "margin"),
    ),
}
CASES = [
    pytest.param(form, name, value, id=f"{form}-{name}={value}")
    for form, (_, names) in FORMS.items()
    for name in names
    for value in BAD[name]
]
VALID = {"margin": 0.5, "hinge_weight": 2.0, "temperature": 10.0, "momentum": 0.9}


@pytest.mark.parametrize(("form", "name", "value"), CASES)
def test_bad_parameter_is_refused_with_its_name(form: str, name: str, value: float) -> None:
    factory, names = FORMS[form]
    arguments = {parameter: VALID[parameter] for parameter in names}
    arguments[name] = value
    with pytest.raises(ValueError, match=rf"^`{name}` must be .*, got {value!r}$"):
        factory(**arguments)


@pytest.mark.parametrize("form", FORMS)
def test_valid_parameters_give_a_finite_loss(form: str) -> None:
    factory, names = FORMS[form]
    result = factory(**{name: VALID[name] for name in names})
    if isinstance(result, torch.nn.Module):
        result = result(
            LOGITS if isinstance(result, SoftHKRLoss) else BINARY_LOGITS,
            TARGET if isinstance(result, SoftHKRLoss) else BINARY_TARGET,
        )
    value = result.loss if isinstance(result, F.HKRTerms) else result
    assert torch.isfinite(value).all()


def test_zero_hinge_weight_and_momentum_are_allowed() -> None:
    SoftHKRLoss(hinge_weight=0.0, momentum=0.0)
    HKRLoss(hinge_weight=0.0)
