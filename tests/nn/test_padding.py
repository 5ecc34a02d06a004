"""Circular padding with a written-out backward: PyTorch's values and gradients, and the twin's convolutions."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_ot.models import NormPreservingConvNet, unconstrained_twin
from lightning_ot.nn import CircularPaddedConv2d, OrthogonalConv2d, circular_pad
from tests.nn._graph import graph_functions


def _recorded_by(tensor: torch.Tensor) -> str:
    return type(tensor.grad_fn).__name__


@pytest.mark.parametrize(
    ("shape", "pad"),
    [
        ((2, 3, 7, 7), (1, 1, 1, 1)),
        ((2, 3, 6, 9), (2, 2, 2, 2)),
        ((1, 2, 5, 4), (0, 3, 1, 0)),  # asymmetric, a side without padding
        ((3, 4, 4), (4, 4, 2, 0)),  # unbatched, padding as wide as the image
        ((2, 2, 3, 5), (0, 0, 3, 3)),
    ],
)
def test_circular_pad_matches_pytorch_values_and_gradients(
    shape: tuple[int, ...], pad: tuple[int, int, int, int]
) -> None:
    torch.manual_seed(0)
    input = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    padded = circular_pad(input, pad)
    assert _recorded_by(padded) == "_CircularPadBackward"
    expected = F.pad(input, pad, mode="circular")
    torch.testing.assert_close(padded, expected, rtol=0, atol=0)
    grad_output = torch.randn_like(expected)
    (grad,) = torch.autograd.grad(padded, input, grad_output)
    (expected_grad,) = torch.autograd.grad(expected, input, grad_output)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-14, atol=1e-14)


def test_circular_pad_double_backward_matches_pytorch() -> None:
    # the straightness penalty differentiates input gradients: the padding's backward is recorded
    torch.manual_seed(0)
    input = torch.randn(2, 3, 6, 6, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(4, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    seconds = []
    for pad in (lambda x: circular_pad(x, (1, 1, 1, 1)), lambda x: F.pad(x, (1, 1, 1, 1), mode="circular")):
        output = F.conv2d(pad(input), weight).tanh().sum()
        (grad,) = torch.autograd.grad(output, input, create_graph=True)
        seconds.append(torch.autograd.grad(grad.square().sum(), (input, weight)))
    for got, expected in zip(*seconds, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradgradcheck(lambda x: circular_pad(x, (2, 1, 0, 2)), (input[:1, :1],))


def test_circular_pad_is_pytorch_padding_where_its_function_does_not_apply() -> None:
    torch.manual_seed(0)
    input = torch.randn(2, 3, 5, 5)
    with torch.no_grad():
        assert torch.equal(circular_pad(input, (1, 1, 1, 1)), F.pad(input, (1, 1, 1, 1), mode="circular"))
    mapped = torch.func.vmap(lambda x: circular_pad(x, (1, 1, 1, 1)))(input.requires_grad_())
    torch.testing.assert_close(mapped, F.pad(input, (1, 1, 1, 1), mode="circular"))
    assert _recorded_by(mapped) != "_CircularPadBackward"
    with pytest.raises(RuntimeError, match=r"[Pp]adding"):  # PyTorch's own message for too much padding
        circular_pad(input, (6, 6, 0, 0))


@pytest.mark.parametrize("padding_mode", ["circular", "zeros"])
def test_circular_padded_conv_is_nn_conv2d(padding_mode: str) -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, padding=1, padding_mode=padding_mode)
    padded = CircularPaddedConv2d.from_conv2d(conv)
    assert padded.weight is not conv.weight
    assert padded.weight.data_ptr() == conv.weight.data_ptr()  # the same values, not a copy
    back = padded.as_conv2d()
    assert type(back) is nn.Conv2d
    assert back.padding_mode == padding_mode
    assert back.padding == (1, 1)
    input = torch.randn(2, 3, 8, 8, requires_grad=True)
    output, expected = padded(input), conv(input)
    torch.testing.assert_close(output, expected)
    grad_output = torch.randn_like(output)
    grads = torch.autograd.grad(output, (input, padded.weight), grad_output)
    expected_grads = torch.autograd.grad(expected, (input, conv.weight), grad_output)
    for got, wanted in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(got, wanted)


def test_orthogonal_conv_and_its_twin_pad_alike() -> None:
    """A circular OrthogonalConv2d pads through circular_pad; its twin is a CircularPaddedConv2d
    holding the same weights (with copy_weights), initialized as nn.Conv2d is without them."""
    torch.manual_seed(0)
    model = NormPreservingConvNet(1, 10, image_size=8, stage_convs=(1,), hidden_features=(16,))
    input = torch.rand(2, 1, 8, 8, requires_grad=True)
    model.train()(input).sum().backward()  # through the written-out padding
    conv = next(m for m in model.modules() if isinstance(m, OrthogonalConv2d))
    twin = unconstrained_twin(model.eval(), activation=nn.Identity, copy_weights=True)
    plain = next(m for m in twin.modules() if isinstance(m, nn.Conv2d))
    assert type(plain) is CircularPaddedConv2d
    assert plain.padding_mode == "circular"
    torch.testing.assert_close(plain.weight, conv.weight.detach())
    features = torch.randn(2, 4, 4, 4)
    with torch.no_grad():
        torch.testing.assert_close(plain(features), conv(features), atol=1e-6, rtol=1e-5)
    torch.manual_seed(1)
    fresh = unconstrained_twin(model)
    torch.manual_seed(1)
    reference_conv = nn.Conv2d(4, 4, 3, padding=1, padding_mode="circular")
    reference_linear = nn.Linear(64, 16)  # the next layer: no random number drawn in between
    fresh_conv = next(m for m in fresh.modules() if isinstance(m, nn.Conv2d))
    fresh_linear = next(m for m in fresh.modules() if isinstance(m, nn.Linear))
    torch.testing.assert_close(fresh_conv.weight, reference_conv.weight, rtol=0, atol=0)
    torch.testing.assert_close(fresh_linear.weight, reference_linear.weight, rtol=0, atol=0)
    assert all(parameter.requires_grad for parameter in fresh.parameters())


def test_a_compiled_circular_convolution_matches_the_eager_one() -> None:
    # dynamo traces F.pad's circular padding: the same values and input gradients as the eager layer
    torch.manual_seed(0)
    model = nn.Sequential(OrthogonalConv2d(2, 2, 3, padding_mode="circular"), nn.Flatten(), nn.Linear(32, 1))
    compiled = torch.compile(model, backend="aot_eager")
    input = torch.randn(3, 2, 4, 4, requires_grad=True)
    eager = model(input)
    assert "_CircularPadBackward" in graph_functions(eager)  # eagerly, the written-out backward
    (eager_grad,) = torch.autograd.grad(eager.sum(), input)
    output = compiled(input)
    torch.testing.assert_close(output, model(input))
    (compiled_grad,) = torch.autograd.grad(output.sum(), input)
    torch.testing.assert_close(compiled_grad, eager_grad)
