"""Distributed training presets for 1-Lipschitz networks, usable from recipes and from Python.

:class:`LipschitzDDPStrategy` is Lightning's :class:`~lightning.pytorch.strategies.DDPStrategy` with the
settings this project's networks need, spelled out as named arguments so a recipe can set them:

- ``sync_buffers=True``: buffers (the soft-hKR running mean of ``|f|``, normalization constants,
  any parametrization state) are copied from rank 0 at every forward, so every rank holds the same
  state even if a buffer is updated on one rank only (DDP's ``broadcast_buffers``, called
  ``forward_sync_buffers`` from torch 2.13);
- ``static_graph=True``: the autograd graph of an OT network is the same at every step (every
  parameter is used, the Björck / orthogonal parametrizations run in full every step), which lets DDP
  overlap communication with the backward and skip the unused-parameter search;
- ``find_unused_parameters=False`` and ``gradient_as_bucket_view=True`` (less memory, no extra copy).

In a recipe::

    trainer:
      strategy:
        class_path: lightning_ot.strategies.LipschitzDDPStrategy
        init_args:
          static_graph: true

Importing this module also registers the names ``"lipschitz_ddp"`` and ``"lipschitz_ddp_spawn"`` with
Lightning's strategy registry, for ``Trainer(strategy="lipschitz_ddp")``.

Mixed precision is a Trainer setting, not a strategy: use ``precision="bf16-mixed"``.
:class:`~lightning_ot.OTClassifier` casts the logits to float32 before the loss, the certificates and
the metrics, so only the backbone runs in bfloat16.
"""

from __future__ import annotations

import inspect
from datetime import timedelta
from typing import Literal

from lightning.pytorch.strategies import DDPStrategy, StrategyRegistry
from torch.distributed.constants import default_pg_timeout
from torch.nn.parallel import DistributedDataParallel

__all__ = ["LipschitzDDPStrategy"]

StartMethod = Literal["popen", "spawn", "fork", "forkserver"]
_SYNC_BUFFERS_ARGUMENT = (
    "forward_sync_buffers"
    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel.__init__).parameters
    else "broadcast_buffers"
)


class LipschitzDDPStrategy(DDPStrategy):
    """DDP with the settings 1-Lipschitz networks trained with hKR need (see the module docstring).

    The hKR losses of :mod:`lightning_ot.losses` all-reduce their class sums and counts themselves, so
    with this strategy ``W`` processes with batch ``b`` take exactly the step one process takes with
    batch ``W * b``.

    Args:
        sync_buffers: copy every buffer from rank 0 at each forward.
        static_graph: tell DDP the graph does not change between steps (true for every backbone in
            this project; set ``False`` for a backbone with data-dependent control flow).
        find_unused_parameters: search for parameters without gradient at each step (only needed for
            backbones that skip some parameters; incompatible with ``static_graph``).
        gradient_as_bucket_view: let gradients alias DDP's communication buckets (saves memory).
        bucket_cap_mb: size of the gradient buckets in MiB (``None``: DDP's default, 25).
        start_method: ``"popen"`` (a script re-launched per process: ``torchrun``, SLURM, or Lightning
            launching itself), ``"spawn"`` (works in notebooks and tests), ``"fork"`` or
            ``"forkserver"``.
        process_group_backend: ``"nccl"`` on GPUs, ``"gloo"`` on CPU; ``None`` picks from the device.
        timeout_minutes: how long a collective waits for the other processes before failing.

    Example:
        >>> strategy = LipschitzDDPStrategy(start_method="spawn")
        >>> strategy._ddp_kwargs["static_graph"], strategy._ddp_kwargs["gradient_as_bucket_view"]
        (True, True)
    """

    def __init__(
        self,
        sync_buffers: bool = True,
        static_graph: bool = True,
        find_unused_parameters: bool = False,
        gradient_as_bucket_view: bool = True,
        bucket_cap_mb: float | None = None,
        start_method: StartMethod = "popen",
        process_group_backend: str | None = None,
        timeout_minutes: float | None = None,
    ) -> None:
        if static_graph and find_unused_parameters:
            raise ValueError(
                "`static_graph=True` and `find_unused_parameters=True` cannot be combined: a static graph "
                "already knows which parameters are unused; set one of them to False"
            )
        if timeout_minutes is not None and timeout_minutes <= 0:
            raise ValueError(f"`timeout_minutes` must be > 0, got {timeout_minutes}")
        ddp_kwargs: dict[str, object] = {
            _SYNC_BUFFERS_ARGUMENT: sync_buffers,
            "static_graph": static_graph,
            "find_unused_parameters": find_unused_parameters,
            "gradient_as_bucket_view": gradient_as_bucket_view,
        }
        if bucket_cap_mb is not None:
            ddp_kwargs["bucket_cap_mb"] = bucket_cap_mb
        super().__init__(
            start_method=start_method,
            process_group_backend=process_group_backend,
            timeout=default_pg_timeout if timeout_minutes is None else timedelta(minutes=timeout_minutes),
            **ddp_kwargs,
        )


def _register(registry: dict) -> None:
    for name, start_method in (("lipschitz_ddp", "popen"), ("lipschitz_ddp_spawn", "spawn")):
        if name not in registry:
            registry.register(
                name,
                LipschitzDDPStrategy,
                description=f"DDP preset for 1-Lipschitz networks (start_method={start_method!r})",
                start_method=start_method,
            )


_register(StrategyRegistry)
