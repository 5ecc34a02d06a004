"""``python -m lightning_ot.explain`` on a checkpoint written by the real fit command."""

from __future__ import annotations

import base64
import csv
import gzip
import inspect
import re
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lightning_ot import OTClassifier
from lightning_ot.data import DigitsDataModule
from lightning_ot.explain import explain
from lightning_ot.explain_cli import CSV_COLUMNS, load_data_inputs, load_image_inputs, main
from tests.conftest import run_module

# the |g| below which the explain command's boundary counterfactual is on the boundary (explain's default)
BOUNDARY_TOLERANCE = inspect.signature(explain).parameters["tolerance"].default


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A quickstart model trained for one epoch by ``python -m lightning_ot.fit`` (W&B offline)."""
    root = tmp_path_factory.mktemp("fit")
    completed = run_module(
        "lightning_ot.fit", "--recipe", "quickstart", "--trainer.max_epochs", "1",
        "--trainer.enable_progress_bar", "false", "--trainer.callbacks=[]",
        cwd=root, timeout=300,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-3000:]
    # The fit command's default logger puts checkpoints under ./lightning-ot/<run id>/checkpoints/.
    (found,) = root.glob("lightning-ot/*/checkpoints/*.ckpt")
    return found


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def check_against_the_model(rows: list[dict[str, str]], model: OTClassifier, inputs: torch.Tensor) -> None:
    with torch.no_grad():
        logits = model(inputs)
    radius = model.certified_radius(logits)
    top2 = logits.topk(2, dim=1)
    np.testing.assert_allclose(
        [float(row["certified_radius"]) for row in rows], radius.numpy(), rtol=1e-5, atol=1e-6
    )
    assert [int(row["prediction"]) for row in rows] == top2.indices[:, 0].tolist()
    assert [int(row["target"]) for row in rows] == top2.indices[:, 1].tolist()
    # The margin is a difference of two float32 logits computed in another process (other threads, so
    # other summation orders): its absolute error is that of the logits, about 1e-7, whatever its size.
    np.testing.assert_allclose(
        [float(row["margin"]) for row in rows],
        (top2.values[:, 0] - top2.values[:, 1]).numpy(),
        rtol=1e-5,
        atol=1e-6,
    )
    for row in rows:
        assert row["flipped"] in ("0", "1")
        assert float(row["gradient_norm"]) <= 1 + 1e-4  # a 1-Lipschitz network
        if row["flipped"] == "1" or row["on_boundary"] == "1":
            distance, radius, margin = (
                float(row[key]) for key in ("boundary_distance", "certified_radius", "margin")
            )
            if row["flipped"] == "1":  # past the boundary: no class change closer than the certificate
                assert distance >= radius * (1 - 1e-4)
            else:
                # on the boundary to its tolerance |g| <= tol, still on the prediction's side: the
                # margin left may leave the point short of the radius by the radius of that margin
                assert distance * margin >= radius * (margin - BOUNDARY_TOLERANCE) * (1 - 1e-4)
            # tightness is their ratio
            assert float(row["tightness"]) == pytest.approx(
                float(row["boundary_distance"]) / float(row["certified_radius"]), rel=1e-5
            )


@pytest.mark.slow
def test_recipe_validation_set_gives_panels_csv_and_a_self_contained_report(checkpoint, tmp_path):
    output = tmp_path / "out"
    completed = run_module(
        "lightning_ot.explain", "--ckpt_path", str(checkpoint), "--recipe", "quickstart",
        "--limit", "16", "--output-dir", str(output), cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "explained 16 inputs" in completed.stdout

    rows = read_csv(output / "predictions.csv")
    assert tuple(rows[0]) == CSV_COLUMNS
    assert len(rows) == 16
    model = OTClassifier.load_from_checkpoint(checkpoint, map_location="cpu").eval()
    data = DigitsDataModule()  # the quickstart recipe's data module, default split
    data.setup("validate")
    inputs, labels = data.val_dataset.tensors
    check_against_the_model(rows, model, inputs[:16])
    assert [int(row["label"]) for row in rows] == labels[:16].tolist()
    assert [row["file"] for row in rows] == [f"val/{index:05d}" for index in range(16)]

    panels = sorted((output / "panels").glob("*.png"))
    assert len(panels) == 16
    assert [row["panel"] for row in rows] == [f"panels/{path.name}" for path in panels]
    with Image.open(panels[0]) as image:
        width, height = image.size
        assert image.mode == "RGB"
    assert height > 64
    assert width > 7 * 64

    page = (output / "report.html").read_text()
    assert page.count('<tr class="input">') == 16
    sources = re.findall(r'src="([^"]*)"', page)
    assert len(sources) == 16
    assert all(source.startswith("data:image/png;base64,") for source in sources)
    assert base64.b64decode(sources[3].split(",", 1)[1]) == (output / rows[3]["panel"]).read_bytes()
    # nothing to fetch: opens offline (outside the embedded images, whose base64 text may spell "http")
    assert "http" not in re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]*", "", page).lower()
    assert "<link" not in page
    assert "<script" not in page
    for row in rows[:3]:
        assert f"{float(row['certified_radius']):.3f}" in page


@pytest.mark.slow
def test_folder_of_pngs_and_a_target_class(checkpoint, tmp_path):
    digits = DigitsDataModule()
    digits.setup("validate")
    images, _ = digits.val_dataset.tensors
    folder = tmp_path / "pngs"
    folder.mkdir()
    for index in range(6):
        array = (images[index, 0].numpy() * 255).round().astype(np.uint8)
        Image.fromarray(array, mode="L").save(folder / f"digit_{index}.png")
    output = tmp_path / "out"
    rows = main(
        [
            "--ckpt_path",
            str(checkpoint),
            "--images",
            str(folder),
            "--output-dir",
            str(output),
            "--no-progress",
        ]
    )
    assert read_csv(output / "predictions.csv") == [
        {key: str(value) for key, value in row.items()} for row in rows
    ]
    assert [Path(row["file"]).name for row in rows] == [f"digit_{index}.png" for index in range(6)]
    assert all(row["label"] == "" for row in rows)
    model = OTClassifier.load_from_checkpoint(checkpoint, map_location="cpu").eval()
    decoded = torch.stack(
        [torch.from_numpy(np.asarray(Image.open(folder / f"digit_{i}.png"))) for i in range(6)]
    )
    check_against_the_model(read_csv(output / "predictions.csv"), model, decoded[:, None].float() / 255)

    rows = main([
        "--ckpt_path", str(checkpoint), "--images", *sorted(map(str, folder.glob("*.png"))),
        "--target", "3", "--output-dir", str(tmp_path / "target"), "--no-progress",
    ])  # fmt: skip
    for row in rows:
        assert row["target"] == 3 or row["prediction"] == 3  # the runner-up where 3 is predicted
        assert row["target"] != row["prediction"]
    assert "runner-up for the" in (tmp_path / "target" / "report.html").read_text()

    nearest = main([
        "--ckpt_path", str(checkpoint), "--images", str(folder), "--boundary-search", "nearest",
        "--output-dir", str(tmp_path / "nearest"), "--no-progress",
    ])  # fmt: skip
    check_against_the_model(
        read_csv(tmp_path / "nearest" / "predictions.csv"), model, decoded[:, None].float() / 255
    )
    newton = read_csv(output / "predictions.csv")
    for found, walked in zip(nearest, newton, strict=True):
        assert float(found["boundary_distance"]) <= float(walked["boundary_distance"]) + 1e-5


def write_idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">BBBB", 0, 0, 8, array.ndim) + b"".join(
        struct.pack(">I", size) for size in array.shape
    )
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


def test_idx_files_with_their_labels_and_image_errors(tmp_path):
    images = np.arange(3 * 4 * 4).reshape(3, 4, 4) % 256
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", images)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.array([7, 2, 1]))
    inputs = load_image_inputs([tmp_path])  # the folder: images, not the labels file
    assert inputs.names == [f"t10k-images-idx3-ubyte.gz[{index}]" for index in range(3)]
    assert inputs.labels.tolist() == [7, 2, 1]
    torch.testing.assert_close(inputs.images, torch.from_numpy(images)[:, None].float() / 255)
    assert len(load_image_inputs([tmp_path], limit=2).names) == 2

    Image.new("RGB", (5, 4), "red").save(tmp_path / "a.png")
    Image.new("RGB", (6, 6), "blue").save(tmp_path / "b.png")
    with pytest.raises(ValueError, match="image-size"):
        load_image_inputs([tmp_path / "a.png", tmp_path / "b.png"])
    resized = load_image_inputs([tmp_path / "a.png", tmp_path / "b.png"], image_size=4)
    assert resized.images.shape == (2, 3, 4, 4)
    assert resized.images[0, 0].min() == 1.0  # red, scaled to [0, 1]
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_image_inputs([tmp_path / "missing.png"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no image"):
        load_image_inputs([tmp_path / "empty"])


def test_command_line_errors_are_clear(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--ckpt_path", str(tmp_path / "none.ckpt"), "--recipe", "quickstart"])
    assert exit_info.value.code == 2
    assert "no such checkpoint" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--ckpt_path", "x.ckpt"])  # no inputs
    assert "one of the arguments --images --data --recipe is required" in capsys.readouterr().err
    if not torch.cuda.is_available():
        checkpoint = tmp_path / "model.ckpt"
        checkpoint.write_bytes(b"")
        with pytest.raises(SystemExit):
            main(["--ckpt_path", str(checkpoint), "--recipe", "quickstart", "--accelerator", "cuda"])
        assert "no CUDA device" in capsys.readouterr().err


def test_data_config_files_give_the_validation_set(tmp_path):
    config = tmp_path / "data.yaml"
    config.write_text(
        "data:\n  class_path: lightning_ot.data.DigitsDataModule\n  init_args:\n    classes: [0, 8]\n"
    )
    inputs = load_data_inputs(config, limit=5)
    expected = DigitsDataModule(classes=[0, 8])
    expected.setup("validate")
    images, labels = expected.val_dataset.tensors
    torch.testing.assert_close(inputs.images, images[:5])
    assert inputs.labels.tolist() == labels[:5].tolist()
    bare = tmp_path / "bare.yaml"
    bare.write_text("class_path: lightning_ot.data.DigitsDataModule\n")
    assert len(load_data_inputs(bare, limit=3).names) == 3
    bad = tmp_path / "bad.yaml"
    bad.write_text("trainer:\n  max_epochs: 1\n")
    with pytest.raises(ValueError, match="data:"):
        load_data_inputs(bad)
    bad.write_text("data:\n  class_path: not.a.DataModule\n")
    with pytest.raises(ValueError, match="not a valid data module"):
        load_data_inputs(bad)
