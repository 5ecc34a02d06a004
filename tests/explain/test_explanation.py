"""``explain``: one pass gives what saliency, counterfactual and the certificate give separately; the
renderer lays it out; ``explanation_mode`` caches third-party parametrizations once, nested too."""

from __future__ import annotations

import io
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from lightning_ot.explain import (
    counterfactual,
    encode_png,
    explain,
    explanation_mode,
    heatmap_panels,
    image_panels,
    render_explanation,
    render_grid,
    saliency,
)
from lightning_ot.metrics import certified_radius
from lightning_ot.models import LipschitzMLP
from tests.conftest import REPO_ROOT
from tests.explain.test_attribution import unit_linear


def orthonormal_rows(in_features: int, out_features: int, seed: int = 0) -> nn.Module:
    """``f(x) = Q x + b`` with orthonormal rows: 1-Lipschitz with a tight certificate."""
    generator = torch.Generator().manual_seed(seed)
    linear = nn.Linear(in_features, out_features)
    with torch.no_grad():
        q, _ = torch.linalg.qr(torch.randn(in_features, out_features, generator=generator))
        linear.weight.copy_(q.T)
        linear.bias.copy_(torch.randn(out_features, generator=generator))
    return nn.Sequential(nn.Flatten(), linear)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_affine_multiclass_explanation_is_exact(dtype):
    model = orthonormal_rows(12, 4).to(dtype)
    x = torch.randn(9, 3, 2, 2, dtype=dtype)
    result = explain(model, x, step_sizes=(0.5, 0.99, 1.01))
    logits = model(x).detach()
    top2 = logits.topk(2, dim=1)
    assert torch.equal(result.prediction, top2.indices[:, 0])
    assert torch.equal(result.target, top2.indices[:, 1])
    torch.testing.assert_close(result.margin, top2.values[:, 0] - top2.values[:, 1])
    torch.testing.assert_close(result.certified_radius, certified_radius(logits))
    weight = model[1].weight.detach()
    torch.testing.assert_close(result.saliency.flatten(1), weight[result.prediction])
    torch.testing.assert_close(result.gradient_norm, torch.ones(9, dtype=dtype))
    torch.testing.assert_close(result.pair_gradient_norm, torch.full((9,), math.sqrt(2), dtype=dtype))
    # An affine g is solved by one Newton step; orthonormal rows make the certificate exact.
    assert result.on_boundary.all()
    torch.testing.assert_close(result.boundary_distance, result.certified_radius, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(
        result.tightness, torch.ones(9, dtype=result.tightness.dtype), rtol=1e-4, atol=0
    )
    assert result.transports.shape == (9, 3, 3, 2, 2)
    assert result.transport_flipped.tolist() == [[False, False, True]] * 9
    assert result.summary()["tightness"] == pytest.approx(1.0, rel=1e-4)


def test_explain_agrees_with_the_separate_functions_on_an_otnn():
    torch.manual_seed(0)
    model = LipschitzMLP(64, 10, hidden_features=(32, 32)).eval()
    x = torch.rand(12, 1, 8, 8)
    result = explain(model, x, step_sizes=(0.5, 2.0), clamp=(0.0, 1.0), max_iterations=7)
    torch.testing.assert_close(result.saliency, saliency(model, x), rtol=1e-5, atol=1e-6)
    steps = counterfactual(model, x, mode="steps", step_sizes=(0.5, 2.0), clamp=(0.0, 1.0))
    boundary = counterfactual(model, x, mode="boundary", clamp=(0.0, 1.0), max_iterations=7)
    torch.testing.assert_close(result.transports, steps.images, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(result.pair_gradient_norm, steps.gradient_norm, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(result.counterfactual, boundary.images[:, 0], rtol=1e-4, atol=1e-5)
    # a point that lands on the boundary (|g| <= tolerance) is on either side by rounding alone
    decided = ~result.on_boundary & ~boundary.on_boundary[:, 0]
    assert torch.equal(result.flipped[decided], boundary.flipped[decided, 0])
    assert torch.equal(
        result.on_boundary | result.flipped, boundary.on_boundary[:, 0] | boundary.flipped[:, 0]
    )
    # A 1-Lipschitz network: gradients bounded, and no boundary point closer than the certified radius.
    assert (result.gradient_norm <= 1 + 1e-4).all()
    assert (result.pair_gradient_norm <= math.sqrt(2) + 1e-4).all()
    reached = result.reached_boundary
    assert reached.any()
    assert (result.tightness[reached] >= 1 - 1e-3).all()
    assert result.tightness[~reached].isnan().all()
    summary = result.summary()
    assert summary["gradient_norm_p10"] <= summary["gradient_norm"] <= 1 + 1e-4
    assert summary["gradient_norm"] == pytest.approx(float(result.gradient_norm.double().median()), abs=0.05)
    for index, step in enumerate(result.step_sizes):  # a flip rate per step size, the last one unnamed too
        assert summary[f"flip_rate@{step:g}"] == float(result.transport_flipped[:, index].double().mean())
    assert summary["flip_rate"] == summary[f"flip_rate@{result.step_sizes[-1]:g}"]


def test_binary_explanation_and_explicit_target():
    model = unit_linear(5, seed=3)
    x = torch.randn(8, 5)
    f = model(x).detach()[:, 0]
    result = explain(model, x, certificate=2.0)
    assert torch.equal(result.prediction, (f > 0).long())
    assert torch.equal(result.target, 1 - result.prediction)
    torch.testing.assert_close(result.margin, f.abs())
    torch.testing.assert_close(result.certified_radius, f.abs() / 2.0)
    torch.testing.assert_close(result.saliency, model[1].weight.detach().expand(8, 5))  # grad f, signed
    torch.testing.assert_close(result.tightness, torch.full((8,), 2.0), rtol=1e-4, atol=0)  # bound L = 2

    multiclass = orthonormal_rows(6, 3)
    x = torch.randn(10, 6)
    logits = multiclass(x).detach()
    prediction = logits.argmax(dim=1)
    target = (prediction + 1) % 3
    result = explain(multiclass, x, certificate=lambda logits: logits[:, 0] * 0 + 0.25, target=target)
    assert torch.equal(result.target, target)
    torch.testing.assert_close(
        result.margin, logits.gather(1, prediction[:, None])[:, 0] - logits.gather(1, target[:, None])[:, 0]
    )
    torch.testing.assert_close(result.certified_radius, torch.full((10,), 0.25))
    with pytest.raises(ValueError, match="differ"):
        explain(multiclass, x, target=prediction)


def test_bad_arguments_are_named():
    model = unit_linear(3)
    with pytest.raises(ValueError, match="certificate"):
        explain(model, torch.randn(2, 3), certificate=0.0)
    with pytest.raises(ValueError, match="step_sizes"):
        explain(model, torch.randn(2, 3), step_sizes=())
    with pytest.raises(ValueError, match="inputs"):
        explain(model, torch.randn(3))
    with pytest.raises(ValueError, match="radii"):
        explain(model, torch.randn(2, 3), certificate=lambda logits: torch.ones(5))


def test_selection_and_device_move_keep_every_field():
    result = explain(orthonormal_rows(4, 3), torch.randn(5, 4))
    one = result[2]
    assert len(one) == 1
    assert one.transports.shape == (1, *result.transports.shape[1:])
    assert torch.equal(one.counterfactual, result.counterfactual[2:3])
    assert one.step_sizes == result.step_sizes
    assert len(result[-1]) == 1
    assert torch.equal(result[-1].prediction, result.prediction[-1:])
    assert len(result[torch.tensor([True, False, True, False, False])]) == 2
    assert result.to("cpu").margin.device.type == "cpu"


# --------------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------------


def test_panels_scale_and_color():
    images = image_panels(torch.tensor([[[[-1.0, 1.0]]], [[[2.0, 4.0]]]]))
    assert images.dtype == torch.uint8
    assert images.shape == (2, 3, 1, 2)
    assert images[:, 0].tolist() == [[[0, 255]], [[0, 255]]]  # each sample on its own range
    assert image_panels(torch.tensor([[[[0.5]]]]), value_range=(0.0, 1.0)).flatten().tolist() == [128] * 3
    rgb = torch.rand(1, 3, 2, 2)
    torch.testing.assert_close(image_panels(rgb, (0.0, 1.0)).float() / 255, rgb, atol=1 / 255, rtol=0)
    heat = heatmap_panels(torch.tensor([[[[-2.0, 0.0, 2.0]]]]))
    left, middle, right = heat[0, :, 0, 0], heat[0, :, 0, 1], heat[0, :, 0, 2]
    assert left[2] > left[0]  # seismic: negative is blue
    assert right[0] > right[2]  # positive is red
    assert middle.min() > 200  # zero is (near) white


def test_grid_layout_and_errors():
    inputs = image_panels(torch.rand(3, 1, 8, 8))
    grid = render_grid([inputs, heatmap_panels(torch.randn(3, 1, 8, 8))], panel_size=32)
    assert grid.shape == (3 * 36, 2 * 36, 3)
    assert grid.dtype == np.uint8
    labelled = render_grid([inputs], row_labels=["a\nb", "c", "d"], column_labels=["input"], panel_size=32)
    assert labelled.shape[0] == grid.shape[0] + 16
    assert labelled.shape[1] > 36
    assert (labelled[:16, :] < 128).any()  # the title is drawn
    with pytest.raises(ValueError, match="row_labels"):
        render_grid([inputs], row_labels=["only one"])
    with pytest.raises(ValueError, match="uint8"):
        render_grid([torch.rand(3, 3, 8, 8)])
    with pytest.raises(ValueError, match="same"):
        render_grid([inputs, image_panels(torch.rand(2, 1, 8, 8))])


@pytest.mark.parametrize("shape", [(5, 7), (6, 4, 3), (3, 9, 4), (1, 1, 3)])
def test_encoded_png_reads_back_exactly_with_pillow(shape):
    from PIL import Image

    image = np.random.default_rng(0).integers(0, 256, size=shape, dtype=np.uint8)
    decoded = Image.open(io.BytesIO(encode_png(image)))
    assert decoded.mode == ("L" if len(shape) == 2 else {3: "RGB", 4: "RGBA"}[shape[2]])
    np.testing.assert_array_equal(np.asarray(decoded), image)
    # a view with strides (a rendered grid's crop) encodes as its copy does
    strided = np.random.default_rng(1).integers(0, 256, size=(8, 10, 3), dtype=np.uint8)[::2, 1::3]
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(encode_png(strided)))), strided)


def test_encoded_grid_compresses_and_bad_images_are_named():
    from PIL import Image

    torch.manual_seed(0)
    model = LipschitzMLP(64, 3, hidden_features=(16,)).eval()
    grid = render_explanation(explain(model, torch.rand(4, 1, 8, 8)), panel_size=48)
    for level in (0, 1, 9):
        data = encode_png(grid, compress_level=level)
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(data))), grid)
    assert len(encode_png(grid)) < grid.nbytes / 5  # enlarged panels and flat colours deflate well
    assert len(encode_png(grid, compress_level=9)) < len(encode_png(grid, compress_level=0))
    with pytest.raises(TypeError, match="uint8"):
        encode_png(grid.astype(np.float32))
    with pytest.raises(TypeError, match="uint8"):
        encode_png(torch.from_numpy(grid))
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        encode_png(grid[:, :, :2])
    with pytest.raises(ValueError, match="non-empty"):
        encode_png(grid[:0])
    with pytest.raises(ValueError, match="compress_level"):
        encode_png(grid, compress_level=10)


def test_rendered_explanation_has_one_row_per_sample_and_a_column_per_view():
    torch.manual_seed(0)
    model = LipschitzMLP(64, 3, hidden_features=(16,)).eval()
    result = explain(model, torch.rand(4, 1, 8, 8), step_sizes=(1.0, 2.0))
    grid = render_explanation(result, panel_size=16)
    columns = 2 + 2 + 2  # input, saliency, 2 transports, boundary, difference
    assert grid.shape[0] == 16 + 4 * 20
    assert (grid.shape[1] - columns * 20) > 0  # captions on the left
    with pytest.raises(ValueError, match="image"):
        render_explanation(explain(unit_linear(3), torch.randn(2, 3)))


# --------------------------------------------------------------------------------------------------
# explanation_mode with a third-party parametrization
# --------------------------------------------------------------------------------------------------


class CountingNormalization(nn.Module):
    calls = 0

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        CountingNormalization.calls += 1
        return weight / weight.norm()


def test_third_party_parametrization_is_computed_once_even_when_nested():
    model = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 2)).eval()
    parametrize.register_parametrization(model[0], "weight", CountingNormalization())
    warm_ups = []  # forward passes on one sample: the cache-filling pass
    model.register_forward_pre_hook(
        lambda module, args: warm_ups.append(1) if args[0].shape[0] == 1 else None
    )
    x = torch.randn(5, 4)
    CountingNormalization.calls = 0
    with torch.inference_mode(), explanation_mode(model, x):
        assert CountingNormalization.calls == 1  # the warm-up pass filled the cache
        with explanation_mode(model, x):
            result = explain(model, x)
            saliency(model, x)
    assert CountingNormalization.calls == 1
    assert len(warm_ups) == 1  # nested contexts reuse the cache without another warm-up pass
    assert result.saliency.shape == (5, 4)
    torch.testing.assert_close(result.saliency, saliency(model, x))


def test_explain_package_does_not_import_lightning():
    code = (
        "import sys, lightning_ot.explain\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('lightning', 'pytorch_lightning'))\n"
        "assert not loaded, loaded\n"
    )
    completed = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True)
    assert completed.returncode == 0, completed.stderr
