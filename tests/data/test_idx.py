from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch

from lightning_ot.data import DatasetLayoutError, FashionMNISTDataModule, MNISTDataModule, read_idx
from tests.data.conftest import write_idx


def test_read_idx_plain_and_gzipped(tmp_path) -> None:
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    for compress in (False, True):
        path = write_idx(tmp_path / f"x{compress}-idx3-ubyte", array, compress)
        np.testing.assert_array_equal(read_idx(path), array)


def test_mnist_module_reads_the_published_files(mnist_root) -> None:
    root, data = mnist_root
    module = MNISTDataModule(root, batch_size=8)
    module.setup("fit")
    assert module.num_classes == 10
    images, labels = next(iter(module.val_dataloader()))
    images, labels = module.on_after_batch_transfer((images, labels), 0)
    assert images.shape == (8, 1, 28, 28)
    assert images.dtype == torch.float32
    assert labels.dtype == torch.int64
    np.testing.assert_allclose(images[:, 0].numpy(), data["t10k"][0][:8] / 255.0, atol=1e-6)
    np.testing.assert_array_equal(labels.numpy(), data["t10k"][1][:8])
    assert len(module.train_dataset) == 30


def test_mnist_binary_subset_relabels(mnist_root) -> None:
    root, data = mnist_root
    module = FashionMNISTDataModule(root, classes=[0, 8])
    module.setup("fit")
    assert module.num_classes == 2
    assert module.class_names == ("T-shirt/top", "Bag")  # the names follow the relabelling
    assert FashionMNISTDataModule.class_names[1] == "Trouser"  # the class's names are untouched
    with pytest.raises(ValueError, match=r"`classes` must list at least two distinct labels in 0\.\.9"):
        FashionMNISTDataModule(root, classes=[0, 0, 8])  # a repeated label would leave a class empty
    labels = module.train_dataset.tensors[1]
    original = data["train"][1][np.isin(data["train"][1], [0, 8])]
    np.testing.assert_array_equal(labels.numpy(), (original == 8).astype(np.int64))


def test_missing_and_malformed_idx_files_are_clear_errors(mnist_root, tmp_path) -> None:
    root, _ = mnist_root
    with pytest.raises(
        DatasetLayoutError, match=r"(?s)folder not found: .*nowhere.*expected layout.*t10k-images-idx3-ubyte"
    ):
        MNISTDataModule(tmp_path / "nowhere")
    (root / "t10k-images-idx3-ubyte").unlink()
    with pytest.raises(DatasetLayoutError, match=r"t10k-images-idx3-ubyte\[\.gz\] not found in"):
        MNISTDataModule(root)
    truncated = root / "t10k-images-idx3-ubyte"
    truncated.write_bytes(gzip.decompress((root / "train-images-idx3-ubyte.gz").read_bytes())[:-5])
    with pytest.raises(ValueError, match="t10k-images-idx3-ubyte is truncated"):
        read_idx(truncated)
    truncated.write_bytes(b"\x12\x34\x56\x78")
    with pytest.raises(ValueError, match="is not an IDX file"):
        read_idx(truncated)
