"""Small datasets written in their real on-disk formats (IDX bytes, JPEG/PNG via PIL, text files)."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# Each class gets its own colour, so a label can be checked from the decoded pixels.
COLOURS = [(220, 30, 30), (30, 30, 220), (30, 200, 30)]


def write_idx(path: Path, array: np.ndarray, compress: bool) -> Path:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    if compress:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)
    return path


def write_image(path: Path, label: int, size: tuple[int, int] = (24, 20)) -> Path:
    """An image of ``size`` (width, height) in the colour of ``label``, with some noise."""
    rng = np.random.default_rng(abs(hash(path.name)) % 2**32)
    base = np.array(COLOURS[label], dtype=np.int16)
    pixels = np.clip(base + rng.integers(-20, 20, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, quality=95) if path.suffix.lower() in (
        ".jpg",
        ".jpeg",
    ) else Image.fromarray(pixels).save(path)
    return path


@pytest.fixture
def mnist_root(tmp_path: Path) -> tuple[Path, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """MNIST-format IDX files: train gzipped, test uncompressed (both occur in the wild)."""
    rng = np.random.default_rng(0)
    data = {}
    for split, count, compress in (("train", 30, True), ("t10k", 12, False)):
        images = rng.integers(0, 256, (count, 28, 28), dtype=np.uint8)
        labels = np.arange(count, dtype=np.uint8) % 10
        write_idx(tmp_path / f"{split}-images-idx3-ubyte", images, compress)
        write_idx(tmp_path / f"{split}-labels-idx1-ubyte", labels, compress)
        data[split] = (images, labels)
    return tmp_path, data
