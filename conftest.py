"""Root pytest configuration: the doctest namespace of every module has ``torch``."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _doctest_torch(doctest_namespace: dict) -> None:
    doctest_namespace["torch"] = torch
