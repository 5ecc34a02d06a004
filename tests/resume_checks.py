"""Comparison of a resumed fit with the uninterrupted one (shared by the single-process and DDP tests)."""

from __future__ import annotations

from typing import Any

import torch


def largest_difference(resumed: dict[str, Any], uninterrupted: dict[str, Any]) -> float:
    """Largest absolute difference over every parameter, buffer and optimizer state tensor; asserts
    that both hold the same names, the same global step and the same scheduler state."""
    assert resumed["global_step"] == uninterrupted["global_step"]
    assert resumed["scheduler"] == uninterrupted["scheduler"]
    pairs = []
    states, expected_states = resumed["parameters_and_buffers"], uninterrupted["parameters_and_buffers"]
    assert states.keys() == expected_states.keys()
    assert any("mean_abs_logit" in name for name in states)  # the soft-hKR running mean is compared too
    pairs += [(states[name], expected_states[name]) for name in states]
    optimizer, expected_optimizer = resumed["optimizer"], uninterrupted["optimizer"]
    assert optimizer["param_groups"] == expected_optimizer["param_groups"]
    assert optimizer["state"].keys() == expected_optimizer["state"].keys()
    for index, slots in optimizer["state"].items():
        assert slots.keys() == expected_optimizer["state"][index].keys()
        pairs += [
            (torch.as_tensor(value), torch.as_tensor(expected_optimizer["state"][index][slot]))
            for slot, value in slots.items()
        ]
    return max(float((actual.double() - expected.double()).abs().max()) for actual, expected in pairs)
