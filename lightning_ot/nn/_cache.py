"""Cache of a constrained weight, reused while the parameters it is computed from are unchanged."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from lightning_ot.nn._transforms import is_transformed

__all__ = ["WeightCache", "cached_weights"]

_forced_caching = 0


@contextmanager
def cached_weights() -> Iterator[None]:
    """Inside, constrained weights are cached (and certified) even in training mode with gradients on.

    The layers of :mod:`lightning_ot.nn` then compute each weight once, without a graph to their
    parameters, as in eval mode: what explanations and audits of a model in training mode need
    (input gradients only). The parameters receive no gradient through such a weight.

    Example:
        >>> from lightning_ot.nn import OrthogonalLinear
        >>> layer = OrthogonalLinear(4, 4)
        >>> with cached_weights():
        ...     layer.weight is layer.weight
        True
        >>> layer.weight is layer.weight
        False
    """
    global _forced_caching
    _forced_caching += 1
    try:
        yield
    finally:
        _forced_caching -= 1


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

    The weight is reused when the owning module is in eval mode or autograd is off (or inside
    :func:`cached_weights`), and recomputed (outside inference mode and without a graph) as soon as a
    source parameter changes: an optimizer step or ``load_state_dict`` bumps its version counter,
    ``.to()`` gives it new storage. That weight is passed through ``certify`` (when given): it is the
    one that certificates, explanations and exports use. In training mode with gradients on, the
    weight is computed afresh on every call, not certified, so that it stays differentiable and cheap.
    Under ``torch.compile`` the certified weight is cached and certified outside the compiled graph
    (eagerly); an uncertified weight is recomputed at every call, and so is every weight under
    ``torch.export`` (export :func:`~lightning_ot.nn.vanilla_export` to keep the certified weights). For parameters passed through
    ``torch.func`` transforms (``functional_call`` inside ``grad``, ``vmap``, ``jvp``) nothing is
    cached or certified: the weight is computed with them, so that gradients flow.

    The cache is a plain attribute, never a buffer: it is not in the ``state_dict`` and cannot differ
    across DDP ranks in anything that is synchronized or saved. Copies and pickles start empty.
    """

    def __init__(self) -> None:
        self.key: tuple | None = None
        self.value: Tensor | None = None

    @staticmethod
    def _key(sources: Sequence[Tensor]) -> tuple:
        return tuple((t.data_ptr(), t._version, t.dtype, t.device, t.shape) for t in sources)

    @staticmethod
    def recomputes(owner: nn.Module, sources: Sequence[Tensor]) -> bool:
        """Whether :meth:`get` computes the weight afresh, differentiable (training mode with
        gradients on, or sources seen through a ``torch.func`` transform), rather than cached."""
        training = owner.training and torch.is_grad_enabled() and not _forced_caching
        return training or any(is_transformed(source) for source in sources)

    def get(
        self,
        owner: nn.Module,
        sources: Sequence[Tensor],
        compute: Callable[[], Tensor],
        certify: Callable[[Tensor], Tensor] | None = None,
    ) -> Tensor:
        # parameters seen through torch.func (functional_call under grad / vmap / jvp) are computed
        # with, never cached: gradients flow to them, and a cached wrapper would outlive its transform
        training = self.recomputes(owner, sources)
        if torch.compiler.is_compiling():
            # torch.export traces with fake tensors: no number can be read back to certify or cache
            if training or certify is None or torch.compiler.is_exporting():
                self.key = self.value = None
                with torch.autocast(sources[0].device.type, enabled=False):
                    return compute()
            # the certification reads numbers back: it runs eagerly, outside the compiled graph
            return self._cached_eagerly(sources, compute, certify)
        if training:
            self.key = self.value = None
            device_type = sources[0].device.type
            if not torch.is_autocast_enabled(device_type):
                return compute()  # entering the context below costs more than a small layer's forward
            with torch.autocast(device_type, enabled=False):
                return compute()
        return self._cached(sources, compute, certify)

    def _cached(
        self,
        sources: Sequence[Tensor],
        compute: Callable[[], Tensor],
        certify: Callable[[Tensor], Tensor] | None,
    ) -> Tensor:
        key = self._key(sources)
        if self.value is None or key != self.key:
            # The constrained weight is computed in float32 even under mixed precision (autocast):
            # Björck iterations in bfloat16 do not converge to an orthogonal matrix (norms of 3 seen).
            full_precision = torch.autocast(sources[0].device.type, enabled=False)
            with torch.inference_mode(False), torch.no_grad(), full_precision, _untraced():
                value = compute()
                self.value = value if certify is None else certify(value)
            self.key = key
        return self.value

    _cached_eagerly = torch.compiler.disable(_cached)

    def clear(self) -> None:
        self.key = self.value = None

    def __deepcopy__(self, memo: dict) -> WeightCache:
        return WeightCache()

    def __getstate__(self) -> dict:
        return {"key": None, "value": None}
