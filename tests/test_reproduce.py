"""``python -m lightning_ot.reproduce``: a quick real run (tiny epochs and sample counts)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from lightning_ot import OTClassifier
from lightning_ot.data import DigitsDataModule
from lightning_ot.explain_cli import validation_tensors
from lightning_ot.models import unconstrained_twin
from lightning_ot.reproduce import (
    CrossEntropy,
    NetworkResults,
    format_table,
    main,
    reproduce,
    spearman_distance,
    untrained_networks,
)


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_quick_reproduction_writes_a_sane_table(tmp_path: Path) -> None:
    results = reproduce(
        epochs=2,
        output_dir=tmp_path,
        num_explained=12,
        radii=(0.1, 0.5),
        mu_fidelity_samples=12,
        stability_samples=3,
        smoothgrad_samples=4,
        figures=True,
    )
    table = (tmp_path / "table.md").read_text()
    assert "| clean accuracy |" in table
    assert "| OTNN | saliency |" in table
    assert "| unconstrained twin | Integrated Gradients |" in table
    saved = json.loads((tmp_path / "results.json").read_text())
    assert [entry["name"] for entry in saved["results"]] == ["OTNN", "unconstrained twin"]
    assert (tmp_path / "saliency.png").stat().st_size > 1000  # no matplotlib needed
    assert (tmp_path / "transports.png").stat().st_size > 1000

    otnn, twin = results
    assert set(otnn.explanations) == {"saliency"}
    assert set(twin.explanations) == {"saliency", "SmoothGrad", "Integrated Gradients"}
    for result in results:
        assert 0.5 < result.accuracy <= 1.0  # 10 balanced classes: chance is 0.1
        certified = [result.certified_accuracy[eps] for eps in ("0.1", "0.5")]
        assert result.accuracy >= certified[0] >= certified[1] >= 0.0
        for rate in (result.flip_rate_1x, result.flip_rate_2x, result.boundary_reached):
            assert 0.0 <= rate <= 1.0
        assert 0.0 <= result.saliency_smoothgrad_distance <= 2.0
        assert -1.0 <= result.saliency_smoothgrad_cosine <= 1.0
        for scores in result.explanations.values():
            assert -1.0 <= scores.mu_fidelity <= 1.0
            assert 0.0 <= scores.stability <= 2.0
            assert 0.0 <= scores.sparseness <= 1.0
            assert math.isfinite(scores.deletion)
            assert math.isfinite(scores.insertion)
    # The OTNN is 1-Lipschitz: gradients of f_k - f_j are at most sqrt(2), and no point of the
    # boundary is closer than the certified radius.
    assert otnn.lipschitz == pytest.approx(1.0)
    assert otnn.gradient_norm_p10 <= otnn.gradient_norm <= 1.0 + 1e-3  # ||grad f_k|| of a 1-Lipschitz net
    assert otnn.pair_gradient_norm <= math.sqrt(2.0) + 1e-3
    assert otnn.tightness >= 1.0 - 1e-3  # no class change closer than the certificate
    assert 1.0 - 1e-3 <= otnn.nearest_tightness <= otnn.tightness + 1e-5
    assert otnn.certified_radius <= otnn.boundary_distance + 1e-3
    # The twin's certificate comes from its (much larger) Lipschitz upper bound.
    assert twin.lipschitz is not None
    assert twin.lipschitz > otnn.lipschitz


def test_spearman_distance() -> None:
    maps = torch.randn(3, 1, 8, 8)
    assert torch.allclose(spearman_distance(maps, 5 * maps + 1), torch.zeros(3), atol=1e-6)
    assert torch.allclose(spearman_distance(maps, -maps), torch.full((3,), 2.0), atol=1e-6)
    with pytest.raises(ValueError, match="same shape"):
        spearman_distance(maps, maps[:, :, :4])


def test_cross_entropy_binary_and_multiclass() -> None:
    logits = torch.tensor([[2.0], [-1.0]])
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits[:, 0], torch.tensor([1.0, 0.0]))
    assert torch.allclose(CrossEntropy()(logits, torch.tensor([1, -1])), expected)
    logits = torch.randn(4, 3)
    target = torch.tensor([0, 2, 1, 2])
    assert torch.allclose(CrossEntropy()(logits, target), torch.nn.functional.cross_entropy(logits, target))


def test_table_marks_missing_certificates() -> None:
    result = NetworkResults("net", "loss", accuracy=0.9, lipschitz=None, certified_accuracy={"0.1": math.nan})
    table = format_table([result])
    assert "| clean accuracy | 90.0 % |" in table
    assert "| certified robust accuracy, L2 radius 0.1 | n/a |" in table


@pytest.mark.parametrize(
    "arguments",
    [
        ["--num-explained", "1"],
        ["--epochs", "0"],
        ["--radii", "-1"],
        ["--twin-lr", "0"],
        ["--twin-lr", "nan"],
    ],
)
def test_command_line_rejects_bad_arguments(arguments: list[str], tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([*arguments, "--output-dir", str(tmp_path)])
    assert exit_info.value.code == 2


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_any_config_file_and_skipping_the_twin_baselines(tmp_path: Path) -> None:
    from tests.conftest import REPO_ROOT

    config = tmp_path / "my_experiment.yaml"  # not a shipped recipe name
    config.write_text((REPO_ROOT / "recipes" / "quickstart.yaml").read_text())
    output = tmp_path / "out"
    otnn, twin = main([
        "--config", str(config), "--epochs", "1", "--num-explained", "6", "--mu-fidelity-samples", "4",
        "--stability-samples", "1", "--smoothgrad-samples", "2", "--skip-twin-baselines",
        "--save-networks", "--output-dir", str(output), "--twin-lr", "1e-12",
    ])  # fmt: skip
    assert set(twin.explanations) == {"saliency"}
    # The saved networks are the measured ones: reloaded, they classify the validation set as measured.
    loaded = OTClassifier.load_from_checkpoint(output / "otnn.ckpt", map_location="cpu").eval()
    loaded_twin = unconstrained_twin(loaded.backbone)
    loaded_twin.load_state_dict(torch.load(output / "twin.pt"))
    inputs, targets = validation_tensors(DigitsDataModule(val_fraction=0.2, seed=0))  # the config's split
    with torch.no_grad():
        otnn_accuracy = (loaded(inputs).argmax(1) == targets).double().mean()
        twin_accuracy = (loaded_twin.eval()(inputs).argmax(1) == targets).double().mean()
    assert float(otnn_accuracy) == pytest.approx(otnn.accuracy)
    assert float(twin_accuracy) == pytest.approx(twin.accuracy)
    # `--twin-lr` trains the twin alone at its own rate: at 1e-12 it ends where it started (the OTNN's
    # initial weights), while the OTNN, at the config's rate, moved.
    from lightning_ot.reproduce import _from_config

    initial, _, _ = _from_config(config, [], 0)
    initial_twin = unconstrained_twin(initial.backbone, copy_weights=True).state_dict()
    twin_moves = [float((loaded_twin.state_dict()[k] - v).abs().max()) for k, v in initial_twin.items()]
    assert max(twin_moves) < 1e-6
    trained_and_initial = zip(loaded.backbone.parameters(), initial.backbone.parameters(), strict=True)
    otnn_moves = [float((a - b).detach().abs().max()) for a, b in trained_and_initial]
    assert max(otnn_moves) > 1e-3
    table = (output / "table.md").read_text()
    assert "SmoothGrad |" not in table.split("| network |", 1)[1].split("\n\n")[0]
    assert "| median ‖∇f_k‖ of the predicted class (1 is tight) |" in table
    assert "| 10th percentile of ‖∇f_k‖ |" in table
    assert "median boundary counterfactual distance / certified radius" in table
    assert "signed" in table
    saved = json.loads((output / "results.json").read_text())
    assert saved["settings"]["config"] == str(config)
    assert saved["settings"]["twin baselines"] == "skipped"
    assert saved["settings"]["twin learning rate"] == "1e-12"
    for entry in saved["results"]:
        assert {"gradient_norm", "gradient_norm_p10", "pair_gradient_norm", "tightness"} <= set(entry)
    assert otnn.gradient_norm <= 1.0 + 1e-3
    assert (output / "transports.png").stat().st_size > 1000
    with pytest.raises(SystemExit):
        main(["--config", str(tmp_path / "missing.yaml"), "--output-dir", str(output)])


def test_the_seed_sets_the_initialization_in_place_of_the_configs() -> None:
    from lightning_ot.recipes import recipe_path
    from lightning_ot.reproduce import _from_config

    def initial_weights(seed: int) -> list[torch.Tensor]:
        model, _, _ = _from_config(recipe_path("quickstart"), [], seed)
        return [parameter.detach().clone() for parameter in model.backbone.parameters()]

    first, again, other = initial_weights(1), initial_weights(1), initial_weights(2)
    # (the first build may run with another thread count: the QR of the orthogonal init differs in
    # its last bits)
    for a, b in zip(first, again, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    assert max(float((a - b).abs().max()) for a, b in zip(first, other, strict=True)) > 0.01


def test_a_network_at_chance_is_flagged() -> None:
    trained = NetworkResults("OTNN", "hKR", accuracy=0.975, lipschitz=1.0, certified_accuracy={})
    dead = NetworkResults(
        "unconstrained twin", "cross-entropy", accuracy=0.1, lipschitz=None, certified_accuracy={}
    )
    notes = untrained_networks([trained, dead], num_classes=10)
    assert len(notes) == 1
    assert notes[0].startswith("unconstrained twin did not learn (accuracy 10.0 %")
    assert untrained_networks([NetworkResults("b", "hKR", 0.8, 1.0, {})], num_classes=2) == []
    assert len(untrained_networks([NetworkResults("b", "hKR", 0.52, 1.0, {})], num_classes=2)) == 1
