"""The Lipschitz audit on known and foreign models, and the vanilla export (equivalence, ONNX, loading)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn

from lightning_ot.models import LipschitzConvNet, LipschitzMLP, LipschitzResNet
from lightning_ot.nn import OrthogonalLinear, gradient_norms, lipschitz_audit, vanilla_export


def test_audit_of_a_foreign_linear_model_finds_its_constant() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))
    with torch.no_grad():
        model[0].weight.copy_(torch.diag(torch.linspace(0.5, 3.0, 8)))
        model[2].weight.mul_(2)
    report = lipschitz_audit(model, (8,))
    norm_2 = torch.linalg.matrix_norm(model[2].weight, ord=2).item()
    assert report.layers[0].operator_norm == pytest.approx(3.0, rel=1e-4)
    assert report.layers[2].operator_norm == pytest.approx(norm_2, rel=1e-4)
    assert report.upper_bound == pytest.approx(3.0 * norm_2, rel=1e-4)
    assert 0 < report.empirical <= report.upper_bound * (1 + 1e-4)


def test_audit_of_an_unknown_module_gives_no_bound_but_an_empirical_estimate() -> None:
    class Doubler(nn.Module):
        def forward(self, input: torch.Tensor) -> torch.Tensor:
            return 2 * input

    report = lipschitz_audit(nn.Sequential(nn.Flatten(), Doubler()), (4,))
    assert report.upper_bound is None
    assert report.unknown == ["1"]
    assert report.empirical == pytest.approx(2.0, rel=1e-4)


def test_audit_respects_padding_and_stride_of_the_actual_operator() -> None:
    conv = nn.Conv2d(1, 1, 3, padding=1, bias=False)
    with torch.no_grad():
        conv.weight.fill_(1.0)
    # on a 1x1 image only the centre tap acts (zero padding): the norm is 1, not 9 (full kernel)
    assert lipschitz_audit(conv, (1, 1, 1), empirical=False).layers[0].operator_norm == pytest.approx(1.0)
    assert lipschitz_audit(conv, (1, 16, 16), empirical=False).layers[0].operator_norm > 8.0


def test_gradient_norm_preservation_of_a_square_orthogonal_mlp() -> None:
    torch.manual_seed(0)
    model = LipschitzMLP(32, 4, hidden_features=(32, 32))
    report = lipschitz_audit(model, (32,), num_starts=32)
    assert report.upper_bound <= 1 + 1e-4
    assert report.empirical <= 1 + 1e-4
    assert report.gradient_norm_min >= 0.999
    assert report.gradient_norm_mean <= 1 + 1e-5


def test_gradient_norms_of_the_top_output() -> None:
    layer = OrthogonalLinear(6, 6)
    torch.testing.assert_close(gradient_norms(layer, torch.randn(5, 6)), torch.ones(5), rtol=1e-5, atol=0)


def _small_models() -> list[tuple[nn.Module, tuple[int, ...]]]:
    torch.manual_seed(0)
    return [
        (
            LipschitzMLP(64, 10, hidden_features=(32, 16), normalize_mean=[0.5], normalize_std=[0.25]),
            (1, 8, 8),
        ),
        (LipschitzConvNet(1, 10, image_size=28, channels=(8, 8, 16, 16, 32)), (1, 28, 28)),
        (
            LipschitzResNet(
                3,
                5,
                width_multiplier=0.125,
                stage_blocks=(1, 1, 1, 1),
                normalize_mean=[0.4] * 3,
                normalize_std=[0.2] * 3,
            ),
            (3, 64, 64),
        ),
    ]


@pytest.mark.parametrize("index", [0, 1, 2])
def test_vanilla_export_is_equivalent_and_plain(index: int, tmp_path) -> None:
    model, shape = _small_models()[index]
    model.train()
    x = torch.rand(4, *shape)
    exported = vanilla_export(model)
    assert model.training  # the input model is left as it was
    model.eval()
    torch.testing.assert_close(exported(x), model(x), atol=1e-5, rtol=0)
    for module in exported.modules():
        assert type(module).__module__.startswith("torch."), type(module)
        assert not hasattr(module, "parametrizations")
    # every tensor is a parameter or a buffer: .to() converts them all
    assert not [name for name, value in vars(exported).items() if isinstance(value, torch.Tensor)]
    output = exported(x).double()
    torch.testing.assert_close(exported.double()(x.double()), output, atol=1e-5, rtol=0)
    exported.float()
    # loads and runs where lightning_ot cannot be imported
    torch.save(exported, tmp_path / "model.pt")
    torch.save(x, tmp_path / "x.pt")
    torch.save(model(x).detach(), tmp_path / "y.pt")
    script = (
        "import sys; sys.modules['lightning_ot'] = None\n"
        "import torch\n"
        f"m = torch.load(r'{tmp_path / 'model.pt'}', weights_only=False)\n"
        f"x = torch.load(r'{tmp_path / 'x.pt'}'); y = torch.load(r'{tmp_path / 'y.pt'}')\n"
        "torch.testing.assert_close(m(x), y, atol=1e-5, rtol=0); print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert result.stdout.strip() == "ok", result.stderr


def _onnx_round_trip(model: nn.Module, shape: tuple[int, ...], dynamo: bool, path) -> None:
    """Export with a dynamic batch, check the file, run it in onnxruntime at two batch sizes."""
    onnx = pytest.importorskip("onnx")
    onnxruntime = pytest.importorskip("onnxruntime")
    if dynamo:
        pytest.importorskip("onnxscript")
    reference = model.eval()
    example = (torch.rand(2, *shape),)
    names = {"input_names": ["input"], "output_names": ["output"]}
    if dynamo:
        torch.onnx.export(model, example, str(path), dynamo=True, dynamic_shapes=({0: "batch"},), **names)
    else:
        torch.onnx.export(
            model, example, str(path), dynamo=False, dynamic_axes={"input": {0: "batch"}}, **names
        )
    onnx.checker.check_model(onnx.load(str(path)))
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 5):
        x = torch.rand(batch, *shape)
        (output,) = session.run(None, {"input": x.numpy()})
        torch.testing.assert_close(torch.from_numpy(output), reference(x).detach(), atol=1e-5, rtol=0)


# the MLP and the ResNet start with a Normalize layer (the legacy exporter once wrote a Transpose with a
# negative permutation for it, which onnxruntime refuses)
@pytest.mark.parametrize("dynamo", [False, True], ids=["legacy", "dynamo"])
@pytest.mark.parametrize("index", [0, 1, 2], ids=["mlp", "convnet", "resnet"])
def test_vanilla_export_runs_in_onnxruntime(index: int, dynamo: bool, tmp_path) -> None:
    model, shape = _small_models()[index]
    _onnx_round_trip(vanilla_export(model), shape, dynamo, tmp_path / "model.onnx")


# Un-exported models: the legacy exporter traces eval mode (cached weights become constants); the
# dynamo exporter traces the weight computation itself, which it can translate for the MLP (Björck's
# matrix products) but not for the convolutions (aten.linalg_qr has no ONNX function).
@pytest.mark.parametrize(
    ("index", "dynamo"),
    [(0, False), (1, False), (2, False), (0, True)],
    ids=["mlp", "convnet", "resnet", "mlp-dynamo"],
)
def test_unexported_models_run_in_onnxruntime(index: int, dynamo: bool, tmp_path) -> None:
    model, shape = _small_models()[index]
    _onnx_round_trip(model, shape, dynamo, tmp_path / "model.onnx")


@pytest.mark.parametrize("index", [0, 1, 2], ids=["mlp", "convnet", "resnet"])
def test_vanilla_export_inlines_layers_and_folds_parameter_only_operations(index: int) -> None:
    model, _ = _small_models()[index]
    exported = vanilla_export(model)
    nodes = list(exported.graph.nodes)
    # F.linear / F.conv2d on flat attributes of the root, no module call, no sigmoid of the residual mixing
    assert not [node for node in nodes if node.op == "call_module"]
    assert all("." not in node.target for node in nodes if node.op == "get_attr")
    assert not [node for node in nodes if node.target is torch.sigmoid]
    assert not list(exported.children())


@pytest.mark.parametrize("size", [(6, 6), (7, 5), (9, 8)])
@pytest.mark.parametrize(("kernel", "stride", "padding"), [(2, None, 0), (3, None, 0), (3, 2, 1)])
def test_exported_l2_norm_pooling_matches_the_layer(
    size: tuple[int, int], kernel: int, stride: int | None, padding: int
) -> None:
    from lightning_ot.nn import L2NormPool2d

    layer = L2NormPool2d(kernel, stride, padding)
    x = torch.randn(2, 3, *size)
    torch.testing.assert_close(vanilla_export(nn.Sequential(layer))(x), layer(x), rtol=1e-6, atol=1e-6)
