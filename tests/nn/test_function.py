"""The library's autograd Functions skip ``torch.autograd.Function.apply``'s argument binding when
every argument is given, and behave as with the standard ``apply`` otherwise."""

from __future__ import annotations

import inspect
from typing import Any

import pytest
import torch

from lightning_ot.models import LipschitzMLP
from lightning_ot.nn import (
    L2NormPool2d,
    MaxMin,
    OrthogonalLinear,
    activations,
    linear,
    pooling,
    retract_weights_,
)
from lightning_ot.nn._function import Function


class _Scale(Function):
    """``factor * input``, with a default factor."""

    @staticmethod
    def forward(input: torch.Tensor, factor: float = 2.0) -> torch.Tensor:
        return factor * input

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[torch.Tensor, float], output: torch.Tensor) -> None:
        ctx.factor = inputs[1]  # needs the default filled in when it is omitted

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return ctx.factor * grad, None

    @staticmethod
    def vmap(info: Any, in_dims: tuple, input: torch.Tensor, factor: float) -> tuple[torch.Tensor, int]:
        return factor * input, in_dims[0]


@pytest.fixture
def signature_calls(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """The ``forward`` methods ``inspect.signature`` is called on from here on: the binding of
    ``torch.autograd.Function.apply``. Calls on anything else (pytest's own fixture machinery
    inspects its callables too) are not counted."""
    calls: list[object] = []
    original = inspect.signature

    def counting(function: object, *args: Any, **kwargs: Any) -> inspect.Signature:
        if getattr(function, "__name__", None) == "forward":
            calls.append(function)
        return original(function, *args, **kwargs)

    monkeypatch.setattr(inspect, "signature", counting)
    return calls


def test_every_argument_given_skips_the_binding(signature_calls: list[object]) -> None:
    x = torch.ones(3, requires_grad=True)
    _Scale.apply(x, 3.0).sum().backward()
    assert signature_calls == []
    assert torch.equal(x.grad, torch.full((3,), 3.0))


def test_omitted_defaults_keywords_and_transforms_take_the_standard_apply(
    signature_calls: list[object],
) -> None:
    x = torch.ones(3, requires_grad=True)
    _Scale.apply(x).sum().backward()  # the default is filled in for setup_context
    assert torch.equal(x.grad, torch.full((3,), 2.0))
    assert torch.equal(_Scale.apply(x, factor=4.0), torch.full((3,), 4.0))
    assert len(signature_calls) == 2
    gradient = torch.func.grad(lambda value: _Scale.apply(value, 5.0).sum())(torch.ones(3))
    assert torch.equal(gradient, torch.full((3,), 5.0))
    assert torch.equal(
        torch.vmap(lambda value: _Scale.apply(value, 2.0))(torch.ones(2, 3)), torch.full((2, 3), 2.0)
    )
    assert len(signature_calls) == 4


def test_the_library_layers_never_bind_arguments(signature_calls: list[object]) -> None:
    """Every Function of the library, as its layers call it in training (forward and backward),
    takes the cheap apply: ``inspect.signature`` is never called."""
    torch.manual_seed(0)
    wide = OrthogonalLinear(48, 32)  # unretracted: Björck's iteration
    retracted = OrthogonalLinear(32, 32)
    retract_weights_(retracted)
    images = torch.rand(2, 4, 8, 8, requires_grad=True)
    rows = torch.rand(8, 48, requires_grad=True)
    signature_calls.clear()
    hidden = MaxMin()(wide(rows))
    outputs = [
        retracted(hidden),  # 8 rows < 32: the projection from the batch
        retracted(hidden.repeat(8, 1)),  # 64 rows: the projection from the gradient
        L2NormPool2d(2)(images),  # disjoint windows
        L2NormPool2d(3, stride=1)(images),  # overlapping windows
    ]
    sum(output.square().sum() for output in outputs).backward()
    assert signature_calls == []
    names = {type(node).__name__ for output in outputs for node in _graph_nodes(output.grad_fn)}
    for function in (
        activations._MaxMinFunction,
        linear._BjorckFunction,
        linear._TangentLinear,
        linear._TangentProjection,
        pooling._L2NormPoolFunction,
        pooling._DisjointL2NormPoolFunction,
    ):
        assert issubclass(function, Function)
        assert f"{function.__name__}Backward" in names  # the layers above ran each of them


def _graph_nodes(node: Any) -> list[Any]:
    seen, stack = [], [node]
    while stack:
        current = stack.pop()
        if current is None or current in seen:
            continue
        seen.append(current)
        stack.extend(next_node for next_node, _ in current.next_functions)
    return seen


def test_layers_give_the_same_values_and_gradients_through_either_apply(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def run() -> tuple[torch.Tensor, list[torch.Tensor]]:
        torch.manual_seed(0)
        model = LipschitzMLP(16, 4, hidden_features=[32, 32]).double()
        retract_weights_(model)
        x = torch.rand(8, 16, dtype=torch.float64)
        output = model(x)
        output.square().sum().backward()
        return output.detach(), [parameter.grad for parameter in model.parameters()]

    fast = run()
    monkeypatch.setattr(Function, "apply", classmethod(torch.autograd.Function.apply.__func__))
    standard = run()
    torch.testing.assert_close(fast[0], standard[0], atol=0, rtol=0)
    for first, second in zip(fast[1], standard[1], strict=True):
        torch.testing.assert_close(first, second, atol=0, rtol=0)
