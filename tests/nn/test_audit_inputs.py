"""The audit refuses what it cannot measure: non-finite inputs and models that do not return (B, K)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_ot.models import LipschitzMLP
from lightning_ot.nn import empirical_lipschitz, gradient_norms, lipschitz_audit


class _Returns(nn.Module):
    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.mlp = LipschitzMLP(16, 3, hidden_features=(8,))

    def forward(self, input: torch.Tensor):
        logits = self.mlp(input)
        return {"tuple": (logits, logits), "flat": logits[:, 0], "plain": logits}[self.kind]


AUDITS = {
    "empirical_lipschitz": lambda model, inputs: empirical_lipschitz(model, inputs, steps=2),
    "gradient_norms": gradient_norms,
    "lipschitz_audit": lambda model, inputs: lipschitz_audit(model, (16,), inputs, ascent_steps=2),
}


@pytest.mark.parametrize("audit", AUDITS)
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_inputs_are_refused(audit: str, value: float) -> None:
    inputs = torch.rand(4, 16)
    inputs[1, 3] = value
    with pytest.raises(ValueError, match=r"`inputs` \(shape \(4, 16\)\) contains 1 non-finite value"):
        AUDITS[audit](_Returns("plain"), inputs)


@pytest.mark.parametrize("audit", AUDITS)
@pytest.mark.parametrize(
    ("kind", "error", "message"),
    [
        ("tuple", TypeError, r"must return a \(B, K\) tensor, got a tuple"),
        ("flat", ValueError, r"got shape \(2,\) \(return \(B, 1\) for a single output\)"),
    ],
)
def test_malformed_outputs_are_named(audit: str, kind: str, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        AUDITS[audit](_Returns(kind), torch.rand(4, 16))


def test_the_output_check_moves_no_batch_norm_statistic() -> None:
    """``gradient_norms`` runs the model as given (one forward); its check adds no forward in train mode."""
    import copy

    model = nn.Sequential(nn.Linear(16, 3), nn.BatchNorm1d(3)).train()
    reference = copy.deepcopy(model)
    inputs = torch.rand(4, 16)
    gradient_norms(model, inputs)
    with torch.no_grad():
        reference(inputs)
    torch.testing.assert_close(model[1].running_mean, reference[1].running_mean)
    assert model[1].num_batches_tracked == 1
    assert model.training
