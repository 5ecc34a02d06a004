"""Cache of a constrained weight, reused while the parameters it is computed from are unchanged."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from lightning_ot.nn._transforms import is_transformed

__all__ = ["WeightCache"]


@contextmanager
def _untraced() -> Iterator[None]:
    """Suspend the TorchScript tracer (the legacy ONNX exporter): a cached weight enters the traced
    graph as a constant, as when it was computed before the trace, not as the ops that computed it."""
    state = torch._C._get_tracing_state()
    torch._C._set_tracing_state(None)
    try:
        yield
    finally:
        torch._C._set_tracing_state(state)


class WeightCache:
    """Holds one computed weight and the identity (storage, version, dtype, device) of its sources.

    The weight is reused when the owning module is in eval mode or autograd is off, and recomputed
    (outside inference mode and without a graph) as soon as a source parameter changes: an optimizer
    step or ``load_state_dict`` bumps its version counter, ``.to()`` gives it new storage. In training
    mode with gradients on, the weight is computed afresh on every call so that it stays
    differentiable. Under ``torch.compile``, and for parameters passed through ``torch.func``
    transforms (``functional_call`` inside ``grad``, ``vmap``, ``jvp``), nothing is cached.

    The cache is a plain attribute, never a buffer: it is not in the ``state_dict`` and cannot differ
    across DDP ranks in anything that is synchronized or saved.
    """

    def __init__(self) -> None:
        self.key: tuple | None = None
        self.value: Tensor | None = None

    @staticmethod
    def _key(sources: Sequence[Tensor]) -> tuple:
        return tuple((t.data_ptr(), t._version, t.dtype, t.device, t.shape) for t in sources)

    def get(self, owner: nn.Module, sources: Sequence[Tensor], compute: Callable[[], Tensor]) -> Tensor:
        # The constrained weight is computed in float32 even under mixed precision (autocast): Björck
        # iterations in bfloat16 do not converge to an orthogonal matrix (spectral norms of 3 seen).
        full_precision = torch.autocast(sources[0].device.type, enabled=False)
        # parameters seen through torch.func (functional_call under grad / vmap / jvp) are computed
        # with, never cached: gradients flow to them, and a cached wrapper would outlive its transform
        transformed = any(is_transformed(source) for source in sources)
        if torch.compiler.is_compiling() or transformed or (owner.training and torch.is_grad_enabled()):
            self.key = self.value = None
            with full_precision:
                return compute()
        key = self._key(sources)
        if self.value is None or key != self.key:
            with torch.inference_mode(False), torch.no_grad(), full_precision, _untraced():
                self.value = compute()
            self.key = key
        return self.value

    def clear(self) -> None:
        self.key = self.value = None

    def __deepcopy__(self, memo: dict) -> WeightCache:
        return WeightCache()

    def __getstate__(self) -> dict:
        return {"key": None, "value": None}
