"""Plain-PyTorch DDP worker for the exactness tests (imported by spawned processes: no pytest here)."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from lightning_ot.losses import HKRLoss, SoftHKRLoss
from lightning_ot.metrics import CertifiedRobustAccuracy, Deletion, Insertion, Sparseness
from lightning_ot.models import LipschitzMLP

STEPS = 3
LOCAL_BATCH = 6
FEATURES = 12
CASES = ("binary", "one_vs_all", "soft")


def make_case(case: str) -> tuple[nn.Module, nn.Module, Tensor, Tensor]:
    """Model, loss, inputs (STEPS, 2 * LOCAL_BATCH, FEATURES) and labels of one case, seeded."""
    generator = torch.Generator().manual_seed(CASES.index(case))
    torch.manual_seed(CASES.index(case))
    outputs = 1 if case == "binary" else 4
    model = LipschitzMLP(FEATURES, outputs, hidden_features=(16, 16))
    inputs = torch.randn(STEPS, 2 * LOCAL_BATCH, FEATURES, generator=generator)
    if case == "binary":
        # Classes unbalanced between the ranks (rank 0 takes even rows, rank 1 odd rows): rank 0 sees
        # 5 positives out of 6, rank 1 only 1, so local class means differ from the global ones.
        labels = torch.tensor([1, 1, 1, 0, 1, 0, 1, 0, 1, 0, 0, 0]).repeat(STEPS, 1)
        loss: nn.Module = HKRLoss(margin=0.5, hinge_weight=5.0)
    else:
        labels = torch.randint(0, outputs, (STEPS, 2 * LOCAL_BATCH), generator=generator)
        labels[:, 1::2] = labels[:, 1::2].clamp_max(1)  # rank 1 never sees classes 2 and 3
        loss = HKRLoss(margin=0.5, hinge_weight=5.0) if case == "one_vs_all" else SoftHKRLoss(0.5, 5.0, 10.0)
    return model, loss, inputs, labels


def train(case: str, rank: int = 0, world_size: int = 1) -> dict[str, object]:
    """Run STEPS SGD steps; rank ``r`` of ``W`` takes rows ``r::W`` of each global batch.

    Returns the loss of each step averaged over the ranks (the global-batch loss), the parameters after
    the first and the last step, and the loss's buffers.
    """
    model, loss_fn, inputs, labels = make_case(case)
    network: nn.Module = DistributedDataParallel(model) if world_size > 1 else model
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    losses, after_first = [], {}
    for step in range(STEPS):
        optimizer.zero_grad()
        loss = loss_fn(network(inputs[step, rank::world_size]), labels[step, rank::world_size])
        loss.backward()
        optimizer.step()
        reported = loss.detach().clone()
        if world_size > 1:
            dist.all_reduce(reported)
            reported /= world_size
        losses.append(float(reported))
        if step == 0:
            after_first = {name: value.detach().clone() for name, value in model.named_parameters()}
    return {
        "losses": losses,
        "first": after_first,
        "last": {name: value.detach().clone() for name, value in model.named_parameters()},
        "buffers": {name: value.clone() for name, value in loss_fn.named_buffers()},
    }


def metric_values(rank: int = 0, world_size: int = 1) -> dict[str, Tensor]:
    """Certified accuracy and explanation metrics, rank ``r`` of ``W`` updating with rows ``r::W``.

    ``compute()`` syncs the metric states over the ranks: every rank must get the full-data value.
    """
    generator = torch.Generator().manual_seed(7)
    inputs = torch.rand(10, 1, 6, 6, generator=generator)
    explanations = torch.randn(10, 1, 6, 6, generator=generator)
    target = torch.randint(0, 3, (10,), generator=generator)
    torch.manual_seed(7)
    model = nn.Sequential(nn.Flatten(), nn.Linear(36, 3))
    metrics = {
        "certified": CertifiedRobustAccuracy(eps=[0.0, 0.05], lipschitz=2.0),
        "deletion": Deletion(model, steps=5),
        "insertion": Insertion(model, steps=5),
        "sparseness": Sparseness(),
    }
    shard = slice(rank, None, world_size)
    with torch.no_grad():
        metrics["certified"].update(model(inputs[shard]), target[shard])
    metrics["deletion"].update(inputs[shard], explanations[shard], target[shard])
    metrics["insertion"].update(inputs[shard], explanations[shard], target[shard])
    metrics["sparseness"].update(explanations[shard])
    return {name: metric.compute() for name, metric in metrics.items()}


def worker(rank: int, world_size: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        results: dict[str, object] = {case: train(case, rank, world_size) for case in CASES}
        results["metrics"] = metric_values(rank, world_size)
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()
