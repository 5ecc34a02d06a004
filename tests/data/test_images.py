from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import lightning.pytorch as pl
import pytest
import torch

from lightning_ot import OTClassifier
from lightning_ot.data import (
    CatsVsDogsDataModule,
    CelebADataModule,
    DatasetLayoutError,
    ImageFolderDataModule,
    ImageNetDataModule,
    load_image,
    make_augmentation,
)
from lightning_ot.models import LipschitzMLP
from tests.data.conftest import write_image


def _dominant_channel(images: torch.Tensor) -> torch.Tensor:
    """(B,) index of the brightest channel: 0 for class 0 (red), 2 for class 1 (blue)."""
    return images.float().mean((2, 3)).argmax(1)


def test_load_image_resizes_and_converts(tmp_path: Path) -> None:
    path = write_image(tmp_path / "a.png", 0, size=(40, 30))
    assert load_image(path).shape == (3, 30, 40)
    assert load_image(path, (12, 16), resize="stretch").shape == (3, 12, 16)
    assert load_image(path, 10, channels=1).shape == (1, 10, 10)
    assert load_image(path, 15, resize="shorter_side").shape == (3, 15, 20)
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    with pytest.raises(OSError, match=r"broken\.jpg"):
        load_image(tmp_path / "broken.jpg")


def test_image_folder_module_batches_labels_and_errors(tmp_path: Path) -> None:
    for label, name in enumerate(["apple", "berry"]):
        for index in range(5):
            write_image(tmp_path / "train" / name / f"{index}.{'jpg' if index % 2 else 'png'}", label * 1)
            write_image(tmp_path / "val" / name / f"{index}.png", label)
    data = ImageFolderDataModule(
        tmp_path / "train", image_size=8, val_dir=tmp_path / "val", batch_size=4, num_workers=2
    )
    data.setup("fit")
    assert data.num_classes == 2
    assert data.classes == ["apple", "berry"]
    for images, labels in data.val_dataloader():
        images, labels = data.on_after_batch_transfer((images, labels), 0)
        assert images.dtype == torch.float32
        assert images.shape[1:] == (3, 8, 8)
        assert 0.0 <= images.min() <= images.max() <= 1.0
        assert labels.dtype == torch.int64
        assert torch.equal(_dominant_channel(images), labels * 2)
    with pytest.raises(DatasetLayoutError, match=r"(?s)image folder not found: .*missing.*CLASS_A"):
        ImageFolderDataModule(tmp_path / "missing", image_size=8)
    (tmp_path / "train" / "empty").mkdir()
    with pytest.raises(DatasetLayoutError, match=r"no image file .*empty"):
        ImageFolderDataModule(tmp_path / "train", image_size=8)


def test_augmentation_runs_on_the_device_during_training_only(tmp_path: Path) -> None:
    """A real fit: uint8 batches become float in [0, 1] after transfer, augmented in training."""
    for label, name in enumerate(["a", "b"]):
        for index in range(4):
            write_image(tmp_path / name / f"{index}.png", label)

    class Spy(pl.Callback):
        stages: ClassVar[list[tuple[bool, torch.dtype, tuple[int, ...]]]] = []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            self.stages.append((True, batch[0].dtype, tuple(batch[0].shape)))

        def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
            self.stages.append((False, batch[0].dtype, tuple(batch[0].shape)))

    data = ImageFolderDataModule(
        tmp_path, image_size=8, val_fraction=0.25, batch_size=2, num_workers=0, augmentation="crop_flip"
    )
    calls = []
    original = data.augment
    data.augment = lambda images: calls.append(images.shape) or original(images)
    model = OTClassifier(LipschitzMLP(3 * 64, 1, hidden_features=(8,)), num_classes=2)
    trainer = pl.Trainer(
        max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False, callbacks=[Spy()]
    )
    trainer.fit(model, data)
    assert {(train, dtype) for train, dtype, _ in Spy.stages} == {
        (True, torch.float32),
        (False, torch.float32),
    }
    assert len(calls) == 3  # 6 training images, batch 2: augmented once per training batch only
    assert make_augmentation("resized_crop_flip", 6)(torch.rand(2, 3, 9, 9)).shape == (2, 3, 6, 6)


def test_cats_vs_dogs_petimages_layout_skips_unreadable_files(tmp_path: Path) -> None:
    root = tmp_path / "PetImages"
    for label, name in enumerate(["Cat", "Dog"]):
        for index in range(3):
            write_image(root / name / f"{index}.jpg", label, size=(30, 26))
    (root / "Cat" / "666.jpg").write_bytes(b"")  # the real archive has such files
    data = CatsVsDogsDataModule(root, image_size=16, verify_images=True, val_fraction=0.34, num_workers=0)
    data.setup("fit")
    assert data.num_classes == 2
    assert data.classes == ["Cat", "Dog"]
    assert len(data.train_dataset) + len(data.val_dataset) == 6
    images = torch.stack([data.train_dataset[index][0] for index in range(len(data.train_dataset))])
    labels = torch.stack([data.train_dataset[index][1] for index in range(len(data.train_dataset))])
    assert images.shape[1:] == (3, 16, 16)
    assert torch.equal(_dominant_channel(images), labels * 2)
    with pytest.raises(DatasetLayoutError, match=r"(?s)no Cat/Dog class folders.*ROOT/Cat"):
        CatsVsDogsDataModule(root / "Cat")


def _write_celeba(root: Path, count: int = 9) -> list[str]:
    names = [f"Attr{index}" for index in range(38)] + ["Smiling", "Young"]
    lines = [str(count), " ".join(names)]
    partition = []
    for index in range(count):
        file = f"{index + 1:06d}.jpg"
        smiling = index % 2
        write_image(root / "img_align_celeba" / file, smiling, size=(178, 218))
        values = ["-1"] * 38 + ["1" if smiling else "-1", "1"]
        lines.append(f"{file}  " + " ".join(f"{value:>2}" for value in values))
        partition.append(f"{file} {0 if index < 5 else 1 if index < 7 else 2}")
    (root / "list_attr_celeba.txt").write_text("\n".join(lines) + "\n")
    (root / "list_eval_partition.txt").write_text("\n".join(partition) + "\n")
    return names


def test_celeba_reads_attributes_and_partition(tmp_path: Path) -> None:
    _write_celeba(tmp_path)
    data = CelebADataModule(tmp_path, attribute="Smiling", image_size=32, batch_size=3, num_workers=0)
    data.setup("fit")
    assert data.num_classes == 2
    assert (len(data.train_dataset), len(data.val_dataset), len(data.test_dataset)) == (5, 2, 2)
    images, labels = data.on_after_batch_transfer(next(iter(data.train_dataloader())), 0)
    assert images.shape == (3, 3, 32, 32)
    assert torch.equal(_dominant_channel(images), labels * 2)
    assert data.train_dataset.labels.tolist() == [0, 1, 0, 1, 0]
    with pytest.raises(ValueError, match="`attribute` must be one of the CelebA attributes"):
        CelebADataModule(tmp_path, attribute="Smiles")
    (tmp_path / "list_attr_celeba.txt").write_text("9\nA B\n000001.jpg 1\n")
    with pytest.raises(DatasetLayoutError, match="malformed attribute file"):
        CelebADataModule(tmp_path, attribute="A")
    (tmp_path / "list_eval_partition.txt").unlink()
    with pytest.raises(DatasetLayoutError, match=r"(?s)list_eval_partition.txt.*img_align_celeba/000001.jpg"):
        CelebADataModule(tmp_path)


def test_imagenet_class_folders_with_device_side_crop(tmp_path: Path) -> None:
    for split, count in (("train", 3), ("val", 2)):
        for label, wnid in enumerate(["n01440764", "n01443537"]):
            for index in range(count):
                write_image(tmp_path / split / wnid / f"{wnid}_{index}.JPEG", label, size=(40, 30))
    data = ImageNetDataModule(tmp_path, image_size=16, resize_size=20, batch_size=2, num_workers=0)
    data.setup("fit")
    assert data.num_classes == 2
    train_images, _ = next(iter(data.train_dataloader()))
    assert train_images.shape == (2, 3, 20, 20)  # cropped to 16 on the device, see below
    assert data.augment(train_images.float() / 255).shape == (2, 3, 16, 16)
    val_images, val_labels = data.on_after_batch_transfer(next(iter(data.val_dataloader())), 0)
    assert val_images.shape == (2, 3, 16, 16)
    assert torch.equal(_dominant_channel(val_images), val_labels * 2)
    with pytest.raises(DatasetLayoutError, match=r"(?s)ImageNet split folder not found: .*val.*n01440764"):
        ImageNetDataModule(tmp_path / "train")
