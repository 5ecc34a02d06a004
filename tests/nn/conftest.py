"""Every test of this folder runs with one torch thread (see ``tests/one_thread.py``)."""

from tests.one_thread import one_torch_thread

__all__ = ["one_torch_thread"]
