"""One torch thread for the layer and backbone tests: on a shared 2-core machine, 2-thread small
matmuls contend badly. Imported by the ``conftest.py`` of the folders that use it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
