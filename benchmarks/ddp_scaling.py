"""DDP scaling of hKR training, and the ImageNet recipe's backbone at 224 x 224.

    python benchmarks/ddp_scaling.py                       # both parts, CPU
    python benchmarks/ddp_scaling.py --part scaling --global-batch 256 --steps 30
    python benchmarks/ddp_scaling.py --part imagenet --device cuda --batch 32

Part 1 (``scaling``): the same global batch, one process versus two processes (plain
``DistributedDataParallel``, gloo on CPU) with the exact hKR losses (their class sums are all-reduced
inside the loss). Both runs get the same cores: one process with ``W`` threads against ``W`` processes
with one thread each. Prints the median step time of each and the throughput ratio (> 1: two processes
are faster).

Part 2 (``imagenet``): the backbone named in ``recipes/imagenet.yaml``, one training step (forward,
soft-hKR loss, backward, Adam) on a synthetic batch of 224 x 224 images: median step time, in float32
and in bf16 autocast (the baseline measured in the same run), and peak memory (CUDA allocator peak on a
GPU, peak resident set size of a fresh process on CPU). On a CPU, ``--threads`` sets the torch threads
(default 1): on a machine whose cores other processes also use, two OpenMP threads made the same
step 2-30x slower than one (5.7 to 79 s instead of 2.2-2.6 s at batch 2, measured 2026-12-01 at a
load average of 2-4 on 2 cores), which is where an earlier 50.3 s figure came from. For the ratio
to the plain twin at the batches people train with, see ``benchmarks/resnet_tax.py``.

Timings on a shared machine are noisy: every figure is a median of repeats, and ratios are taken
within one run; the load average is printed.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from lightning_ot.losses import SoftHKRLoss  # noqa: E402


def _scaling_model(num_classes: int) -> torch.nn.Module:
    models = importlib.import_module("lightning_ot.models")
    if hasattr(models, "LipschitzConvNet"):
        return models.LipschitzConvNet(in_channels=1, num_outputs=num_classes, image_size=28)
    return models.LipschitzMLP(28 * 28, num_classes, hidden_features=(512, 512, 512))


def _train_steps(rank: int, world_size: int, global_batch: int, steps: int, threads: int) -> list[float]:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = _scaling_model(10)
    network = torch.nn.parallel.DistributedDataParallel(model) if world_size > 1 else model
    loss_fn = SoftHKRLoss(margin=0.5, hinge_weight=5.0, temperature=10.0)
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-4)
    generator = torch.Generator().manual_seed(rank)
    local = global_batch // world_size
    images = torch.rand(local, 1, 28, 28, generator=generator)
    labels = torch.randint(0, 10, (local,), generator=generator)
    times = []
    for _ in range(steps + 3):
        if world_size > 1:
            dist.barrier()
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss_fn(network(images), labels).backward()
        optimizer.step()
        if world_size > 1:
            dist.barrier()
        times.append(time.perf_counter() - start)
    return times[3:]


def _worker(rank: int, world_size: int, global_batch: int, steps: int, store: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world_size)
    try:
        times = _train_steps(rank, world_size, global_batch, steps, threads=1)
        if rank == 0:
            Path(out).write_text(json.dumps(times))
    finally:
        dist.destroy_process_group()


def scaling(global_batch: int, steps: int, world_size: int) -> dict[str, float]:
    single = statistics.median(_train_steps(0, 1, global_batch, steps, threads=world_size))
    fixed = statistics.median(_train_steps(0, 1, world_size, steps, threads=1))
    with tempfile.TemporaryDirectory() as folder:
        out = str(Path(folder) / "times.json")
        mp.spawn(
            _worker,
            args=(world_size, global_batch, steps, str(Path(folder) / "store"), out),
            nprocs=world_size,
        )
        multi = statistics.median(json.loads(Path(out).read_text()))
    result = {
        "global_batch": global_batch,
        "single_process_step_s": single,
        f"{world_size}_processes_step_s": multi,
        "single_process_samples_per_s": global_batch / single,
        f"{world_size}_processes_samples_per_s": global_batch / multi,
        "throughput_ratio": single / multi,
        "fixed_step_s_one_thread": fixed,
    }
    print(f"model: {type(_scaling_model(10)).__name__}, global batch {global_batch}, median of {steps} steps")
    for label, seconds in (
        (f"1 process x {world_size} threads", single),
        (f"{world_size} processes x 1 thread", multi),
    ):
        print(f"  {label:24s}: {1000 * seconds:8.1f} ms/step  {global_batch / seconds:8.0f} samples/s")
    print(
        f"  fixed cost per step (batch of {world_size}: weight parametrizations, optimizer), paid by every "
        f"process whatever its batch: {1000 * fixed:.1f} ms"
    )
    print(f"  throughput ratio ({world_size} processes / 1 process): {single / multi:.2f}x")
    return result


def _imagenet_backbone() -> torch.nn.Module:
    config = yaml.safe_load((REPO / "recipes" / "imagenet.yaml").read_text())
    backbone = config["model"]["init_args"]["backbone"]
    module, _, name = backbone["class_path"].rpartition(".")
    cls = getattr(importlib.import_module(module), name, None)
    if cls is None:
        raise SystemExit(
            f"{backbone['class_path']} is not available in this checkout (see the `layers` branch)"
        )
    return cls(**backbone.get("init_args", {}))


def _imagenet_step_times(
    device: str, batch: int, steps: int, bf16: bool, threads: int | None = None
) -> tuple[list[float], int]:
    if threads is not None:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = _imagenet_backbone().to(device)
    loss_fn = SoftHKRLoss(margin=0.05, hinge_weight=500.0, temperature=200.0).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    images = torch.rand(batch, 3, 224, 224, device=device)
    labels = torch.randint(0, 1000, (batch,), device=device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps + 1):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
            logits = model(images)
        loss_fn(logits.float(), labels).backward()
        optimizer.step()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() if device == "cuda" else 0
    return times[1:], peak


def imagenet(device: str, batch: int, steps: int, threads: int = 1) -> dict[str, float]:
    parameters = sum(p.numel() for p in _imagenet_backbone().parameters())
    result: dict[str, float] = {"parameters_M": parameters / 1e6, "batch": batch}
    where = device if device != "cpu" else f"cpu, {threads} thread(s), load average {os.getloadavg()[0]:.1f}"
    print(f"imagenet backbone: {parameters / 1e6:.1f}M parameters, batch {batch} x 3 x 224 x 224 on {where}")
    for bf16 in (False, True):
        label = "bf16" if bf16 else "fp32"
        if device == "cuda":
            times, peak = _imagenet_step_times(device, batch, steps, bf16)
        else:  # a fresh process, so that its peak resident memory is this step's alone
            code = (
                f"import json, resource, sys; sys.path.insert(0, {str(REPO)!r}); "
                "from benchmarks.ddp_scaling import _imagenet_step_times as f; "
                f"t, _ = f('cpu', {batch}, {steps}, {bf16}, {threads}); "
                "print(json.dumps([t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024]))"
            )
            output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
            times, peak = json.loads(output.stdout.strip().splitlines()[-1])
        median = statistics.median(times)
        result[f"{label}_step_s"] = median
        result[f"{label}_peak_memory_GiB"] = peak / 2**30
        memory = peak / 2**30
        print(f"  {label}: {1000 * median:9.1f} ms/step (median of {steps}), peak memory {memory:6.2f} GiB")
    result["bf16_speedup"] = result["fp32_step_s"] / result["bf16_step_s"]
    print(f"  bf16 autocast speed-up over fp32: {result['bf16_speedup']:.2f}x")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--part", choices=["all", "scaling", "imagenet"], default="all")
    parser.add_argument("--global-batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=4, help="ImageNet batch (224 x 224)")
    parser.add_argument("--imagenet-steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the ImageNet step on a CPU")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    results: dict[str, dict[str, float]] = {}
    if args.part in ("all", "scaling"):
        results["scaling"] = scaling(args.global_batch, args.steps, args.processes)
    if args.part in ("all", "imagenet"):
        results["imagenet"] = imagenet(args.device, args.batch, args.imagenet_steps, args.threads)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
