"""How many CPU threads torch uses for a training job.

Small models on the CPU gain nothing from a second thread when the cores are idle and collapse when
they are busy: on 2 cores loaded by other work the quickstart took 10 min 35 s with torch's default of
2 threads and 65 s with one (see ``benchmarks/threads.py``). The policy, applied by
``python -m lightning_ot`` (``--num_threads``, default ``auto``):

- an explicit ``--num_threads N`` wins;
- otherwise ``OMP_NUM_THREADS`` or ``MKL_NUM_THREADS``, when set, wins (torch already read it);
- otherwise, training on the CPU, a model under :data:`SMALL_MODEL_PARAMETERS` parameters gets one
  thread, a larger one torch's default divided among the processes of this machine (CPU DDP);
- on an accelerator nothing is changed.
"""

from __future__ import annotations

import os
from typing import Literal

import torch
from torch import nn

__all__ = ["SMALL_MODEL_PARAMETERS", "THREAD_VARIABLES", "choose_num_threads"]

SMALL_MODEL_PARAMETERS = 1_000_000
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def choose_num_threads(
    requested: int | Literal["auto"],
    model: nn.Module,
    on_cpu: bool,
    processes_per_machine: int = 1,
) -> tuple[int | None, str]:
    """The thread count for a job and the reason, or ``(None, reason)`` to leave torch's setting.

    Args:
        requested: ``"auto"`` or an explicit count (>= 1).
        model: the model to train (its parameter count decides).
        on_cpu: whether it trains on the CPU.
        processes_per_machine: training processes sharing this machine's cores.

    Example:
        >>> choose_num_threads(3, nn.Linear(10, 10), on_cpu=True)
        (3, 'requested')
    """
    if requested != "auto":
        if isinstance(requested, bool) or not isinstance(requested, int) or requested < 1:
            raise ValueError(f"`num_threads` must be 'auto' or an integer >= 1, got {requested!r}")
        return requested, "requested"
    for variable in THREAD_VARIABLES:
        if os.environ.get(variable):
            return None, f"{variable}={os.environ[variable]} is set"
    if not on_cpu:
        return None, "training on an accelerator"
    parameters = sum(parameter.numel() for parameter in model.parameters())
    if parameters < SMALL_MODEL_PARAMETERS:
        return 1, f"a model of {parameters:,} parameters (< {SMALL_MODEL_PARAMETERS:,}) on the CPU"
    if processes_per_machine > 1:
        share = max(1, torch.get_num_threads() // processes_per_machine)
        return share, f"{processes_per_machine} processes share the CPU cores"
    return None, "a large model on the CPU: torch's default"
