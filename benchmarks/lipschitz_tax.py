"""The cost of 1-Lipschitz layers: training-step time against the same architecture with plain layers.

    python benchmarks/lipschitz_tax.py                 # everything (a few minutes on 2 cores)
    python benchmarks/lipschitz_tax.py --skip-resnet   # only the small backbones

For each backbone, the training step (forward, backward, Adam step) of the lightning_ot model and of
its plain twin with ReLU (``unconstrained_twin``) are timed in the same run, interleaved step by step
so that a shared machine slows both alike; the median of the per-round ratios after warm-up is
printed, with its quartiles. A twin with circular padding pads as the library's convolutions do
(``CircularPaddedConv2d``), so the ratio is the Lipschitz constraint's alone; such backbones also
print the twin built from ``nn.Conv2d`` (PyTorch's slower circular padding: what a plain network
written by hand costs), timed in the same rounds. On the 5-conv + 2-linear 28x28 network, deel-torchlip and orthogonium
versions are timed too when those packages are installed (optional, never required). Then: peak memory of one training step of the
ImageNet-scale ``LipschitzResNet`` at 224x224 (in a fresh subprocess), and the inference-time ratio
of the ``vanilla_export`` of the ConvNet against its plain twin (``benchmarks/export_speed.py``
measures that for every backbone at batch 1 and 256).
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lightning_ot.losses import straightness_penalty
from lightning_ot.models import (
    LipschitzConvNet,
    LipschitzMLP,
    LipschitzResNet,
    NormPreservingConvNet,
    unconstrained_twin,
)
from lightning_ot.nn import CircularPaddedConv2d, gradient_norms, retract_weights_, vanilla_export
from lightning_ot.nn.export import replace_modules


def training_step(
    model: nn.Module,
    batch: torch.Tensor,
    target: torch.Tensor,
    retraction_steps: int = 0,
    straightness_weight: float = 0.0,
    autocast_dtype: torch.dtype | None = None,
) -> Callable[[], None]:
    """One training step (cross-entropy, Adam, then ``retraction_steps`` Björck steps), with
    ``straightness_weight`` times :func:`~lightning_ot.losses.straightness_penalty` in the loss;
    with ``autocast_dtype`` (e.g. ``torch.bfloat16``) the forward and the loss run under
    ``torch.autocast``, as Lightning's ``precision="bf16-mixed"`` runs them."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    model.train()
    device_type = batch.device.type

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        input = batch.detach().requires_grad_(True) if straightness_weight else batch
        with torch.autocast(
            device_type, dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None
        ):
            logits = model(input)
            loss = F.cross_entropy(logits.float(), target)
            if straightness_weight:
                loss = loss + straightness_weight * straightness_penalty(model, input, target, logits=logits)
        loss.backward()
        optimizer.step()
        if retraction_steps:
            retract_weights_(model, retraction_steps)

    return step


def interleaved_times(
    steps: dict[str, Callable[[], None]], repeats: int, warmup: int
) -> dict[str, list[float]]:
    """Seconds of each call of each function, calling them in turn so that load hits all alike."""
    times: dict[str, list[float]] = {name: [] for name in steps}
    for index in range(warmup + repeats):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            elapsed = time.perf_counter() - start
            if index >= warmup:
                times[name].append(elapsed)
    return times


def pretrain(
    model: nn.Module,
    input_shape: tuple[int, ...],
    num_outputs: int,
    steps: int,
    lr: float = 1e-3,
    retraction_steps: int = 0,
) -> None:
    """Train on random data so that the raw weights drift from their orthogonal initialization.

    Without retraction nothing pulls an unconstrained matrix back to orthogonality during training:
    its singular values spread, and Björck's iteration needs more steps than at initialization (the
    timing that follows measures that cost). With ``retraction_steps`` the raw matrices are retracted
    after every step (:func:`lightning_ot.nn.retract_weights_`), as ``OTClassifier`` does.
    """
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    device = next(model.parameters()).device
    model.train()
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        batch = torch.rand(128, *input_shape).to(device)
        F.cross_entropy(model(batch), torch.randint(0, num_outputs, (128,)).to(device)).backward()
        optimizer.step()
        if retraction_steps:
            retract_weights_(model, retraction_steps)


def with_pytorch_padding(twin: nn.Module) -> nn.Module | None:
    """A copy of ``twin`` whose circular convolutions are ``nn.Conv2d`` (PyTorch's circular padding)
    instead of :class:`~lightning_ot.nn.CircularPaddedConv2d`, or None if it has none.

    The twin pads as the library's layers do, so that the tax measures the Lipschitz constraint
    alone; this copy is what a plain network written with ``nn.Conv2d`` costs.
    """
    if not any(isinstance(module, CircularPaddedConv2d) for module in twin.modules()):
        return None

    def replace(module: nn.Module) -> nn.Module | None:
        return module.as_conv2d() if isinstance(module, CircularPaddedConv2d) else None

    return replace_modules(copy.deepcopy(twin), replace)


def paired_ratio(times: list[float], baseline: list[float]) -> tuple[float, float, float]:
    """Median and quartiles of the per-round ratios ``times[i] / baseline[i]``.

    A round times every model back to back, so a load spike that slows one round slows both sides of
    its ratio; the median over rounds is steadier than the ratio of two medians.
    """
    ratios = sorted(value / base for value, base in zip(times, baseline, strict=True))
    quartiles = statistics.quantiles(ratios, n=4)
    return statistics.median(ratios), quartiles[0], quartiles[2]


def peer_convnets() -> dict[str, nn.Module]:
    """The same 5-conv + 2-linear network built with deel-torchlip and orthogonium, if installed."""
    peers: dict[str, nn.Module] = {}
    widths = (32, 32, 64, 64, 128)
    pools = {1, 3, 4}
    try:
        import deel.torchlip as torchlip

        layers: list[nn.Module] = []
        width = 1
        for index, out in enumerate(widths):
            layers += [torchlip.SpectralConv2d(width, out, 3, padding=1), torchlip.GroupSort2()]
            if index in pools:
                layers.append(torchlip.ScaledL2NormPool2d(2))
            width = out
        layers += [
            nn.Flatten(),
            torchlip.SpectralLinear(128 * 9, 128),
            torchlip.GroupSort2(),
            torchlip.SpectralLinear(128, 10),
        ]
        peers["deel-torchlip"] = nn.Sequential(*layers)
    except ImportError:
        pass
    try:
        from orthogonium.layers import AdaptiveOrthoConv2d, MaxMin, OrthoLinear

        layers = []
        width = 1
        for index, out in enumerate(widths):
            layers += [AdaptiveOrthoConv2d(width, out, 3, padding="same", padding_mode="zeros"), MaxMin()]
            if index in pools:
                layers.append(nn.LPPool2d(2, 2))
            width = out
        layers += [nn.Flatten(), OrthoLinear(128 * 9, 128), MaxMin(), OrthoLinear(128, 10)]
        peers["orthogonium"] = nn.Sequential(*layers)
    except ImportError:
        pass
    return peers


def compare(
    title: str,
    model: nn.Module,
    input_shape: tuple[int, ...],
    num_outputs: int,
    batch_sizes: list[int],
    repeats: int,
    warmup: int,
    peers: dict[str, nn.Module] | None = None,
    pretrain_steps: int = 0,
    pretrain_lr: float = 1e-3,
    retraction_steps: int = 0,
) -> dict[str, dict[int, float]]:
    twin = unconstrained_twin(model)
    pytorch_padded = with_pytorch_padding(twin)
    if pretrain_steps:
        pretrain(model, input_shape, num_outputs, pretrain_steps, pretrain_lr, retraction_steps)
        title += f", after {pretrain_steps} Adam steps at lr {pretrain_lr:g}"
    if retraction_steps:
        title += (
            f", retracted after every step ({retraction_steps} Björck step, timed with the step; training "
            "forwards then use the retracted matrices as they are)"
        )
    print(
        f"\n== {title}: training step (forward + backward + Adam), median of {repeats} after {warmup} warm-up"
    )
    norms = gradient_norms(
        model.eval(), torch.rand(64, *input_shape, generator=torch.Generator().manual_seed(0))
    )
    print(
        f"  gradient norm ||grad f_k|| of the top output, 64 uniform random inputs, at this state: "
        f"median {norms.median():.3f}, 10th percentile {norms.quantile(0.1):.3f} (1 = tight)"
    )
    results: dict[str, dict[int, float]] = {}
    for batch_size in batch_sizes:
        batch = torch.rand(batch_size, *input_shape)
        target = torch.randint(0, num_outputs, (batch_size,))
        steps = {
            "plain twin (ReLU)": training_step(twin, batch, target),
            "lightning_ot": training_step(model, batch, target, retraction_steps),
        }
        if pytorch_padded is not None:
            steps["twin, nn.Conv2d pad"] = training_step(pytorch_padded, batch, target)
        for name, peer in (peers or {}).items():
            steps[name] = training_step(peer, batch, target)
        times = interleaved_times(steps, repeats, warmup)
        base = times["plain twin (ReLU)"]
        for name, values in times.items():
            ratio, low, high = paired_ratio(values, base)
            results.setdefault(name, {})[batch_size] = ratio
            print(
                f"  batch {batch_size:4d}  {name:20s} {1000 * statistics.median(values):9.1f} ms/step   "
                f"ratio {ratio:5.2f}x (quartiles {low:.2f}-{high:.2f})"
            )
    return results


def inference_ratio(model: nn.Module, input_shape: tuple[int, ...], batch_size: int, repeats: int) -> float:
    exported = vanilla_export(model)
    twin = unconstrained_twin(model).eval()
    batch = torch.rand(batch_size, *input_shape)

    def run(module: nn.Module) -> Callable[[], None]:
        def call() -> None:
            with torch.inference_mode():
                module(batch)

        return call

    times = interleaved_times({"twin": run(twin), "exported": run(exported)}, repeats, 3)
    ratio, low, high = paired_ratio(times["exported"], times["twin"])
    print(
        f"\n== inference, batch {batch_size}: exported {1000 * statistics.median(times['exported']):.1f} ms, "
        f"plain twin {1000 * statistics.median(times['twin']):.1f} ms, ratio {ratio:.2f}x "
        f"(quartiles {low:.2f}-{high:.2f})"
    )
    return ratio


def _resident_megabytes(field: str) -> float:
    """``VmRSS`` (current) or ``VmHWM`` (peak) of this process from /proc, in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def resnet_memory(width_multiplier: float, batch_size: int, image_size: int, plain: bool) -> dict[str, float]:
    """Run in a fresh process: peak resident memory of one training step of the ResNet.

    The peak is reset (``/proc/self/clear_refs``) after the model is built, so what is reported is the
    step's own peak: the model, its gradients, Adam's state and the activations.
    """
    torch.manual_seed(0)
    model = LipschitzResNet(3, 1000, width_multiplier=width_multiplier)
    if plain:
        model = unconstrained_twin(model)
    parameters = sum(p.numel() for p in model.parameters())
    # the plain network of the same shapes (vanilla_export would certify all 25M weights first)
    exported = sum(p.numel() for p in unconstrained_twin(model).parameters()) if not plain else parameters
    gc.collect()
    batch = torch.rand(batch_size, 3, image_size, image_size)
    target = torch.randint(0, 1000, (batch_size,))
    step = training_step(model, batch, target)
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak resident size to the current one
    before = _resident_megabytes("VmRSS")
    start = time.perf_counter()
    step()
    seconds = time.perf_counter() - start
    return {
        "trainable_parameters": parameters,
        "plain_parameters": exported,
        "rss_before_mb": before,
        "peak_rss_mb": _resident_megabytes("VmHWM"),
        "step_seconds": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--skip-peers", action="store_true")
    parser.add_argument("--skip-resnet", action="store_true")
    parser.add_argument("--skip-celeba", action="store_true")
    parser.add_argument(
        "--pretrain-steps",
        type=int,
        default=0,
        help="train the lightning_ot backbones (not the twins or peers) this many Adam steps before timing",
    )
    parser.add_argument("--pretrain-lr", type=float, default=1e-3, help="learning rate of those steps")
    parser.add_argument(
        "--retraction-steps",
        type=int,
        default=0,
        help="retract the lightning_ot backbones' raw weights after every step (pretraining and timed steps)",
    )
    parser.add_argument("--resnet-batch", type=int, default=2)
    parser.add_argument("--resnet-image-size", type=int, default=224)
    parser.add_argument("--_resnet-child", dest="resnet_child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.resnet_child is not None:
        width, plain = args.resnet_child.split(",")
        print(
            json.dumps(resnet_memory(float(width), args.resnet_batch, args.resnet_image_size, plain == "1"))
        )
        return
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    peers = None if args.skip_peers else peer_convnets()
    drift = {
        "pretrain_steps": args.pretrain_steps,
        "pretrain_lr": args.pretrain_lr,
        "retraction_steps": args.retraction_steps,
    }
    compare(
        "ConvNet 5 conv + 2 linear, 1x28x28 (FashionMNIST size)",
        LipschitzConvNet(1, 10, image_size=28),
        (1, 28, 28),
        10,
        args.batch_sizes,
        args.repeats,
        args.warmup,
        peers,
        **drift,
    )
    for hidden_groups, title in (
        (1, "NormPreservingConvNet, 1x28x28 (the mnist5k recipe's)"),
        (2, "NormPreservingConvNet with a two-block head, 1x28x28 (the mnist5k_fast recipe's)"),
    ):
        backbone = NormPreservingConvNet(
            1,
            10,
            28,
            stage_convs=(3, 6),
            kernel_size=(5, 3),
            hidden_features=(512,),
            hidden_groups=hidden_groups,
        )
        compare(title, backbone, (1, 28, 28), 10, args.batch_sizes, args.repeats, args.warmup, **drift)
    compare(
        "MLP 64-(64 x 6)-10 (quickstart)",
        LipschitzMLP(64, 10, hidden_features=(64,) * 6),
        (64,),
        10,
        args.batch_sizes,
        args.repeats,
        args.warmup,
        **drift,
    )
    compare(
        "MLP 64-256-256-256-10 (earlier quickstart, widening)",
        LipschitzMLP(64, 10, hidden_features=(256, 256, 256)),
        (64,),
        10,
        args.batch_sizes,
        args.repeats,
        args.warmup,
        **drift,
    )
    if not args.skip_celeba:
        compare(
            "ConvNet 6 conv + 2 linear, 3x64x64 (CelebA size)",
            LipschitzConvNet(3, 2, image_size=64, channels=(32, 32, 64, 64, 128, 128)),
            (3, 64, 64),
            2,
            [args.batch_sizes[0]],
            max(5, args.repeats // 3),
            2,
        )
    inference_ratio(LipschitzConvNet(1, 10, image_size=28), (1, 28, 28), max(args.batch_sizes), args.repeats)
    if not args.skip_resnet:
        print(
            f"\n== ImageNet-scale LipschitzResNet, one training step at {args.resnet_image_size}px, "
            f"batch {args.resnet_batch}"
        )
        for width, plain in ((1.0, 0), (1.0, 1), (1.41, 0)):
            command = [sys.executable, __file__, "--_resnet-child", f"{width},{plain}"]
            command += [
                "--resnet-batch",
                str(args.resnet_batch),
                "--resnet-image-size",
                str(args.resnet_image_size),
            ]
            if args.threads is not None:
                command += ["--threads", str(args.threads)]
            output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
            figures = json.loads(output.strip().splitlines()[-1])
            label = f"width x{width}" + (" plain twin" if plain else "")
            print(
                f"  {label:22s} weights {figures['plain_parameters'] / 1e6:6.1f}M (trainable "
                f"{figures['trainable_parameters'] / 1e6:5.1f}M)  peak RSS {figures['peak_rss_mb']:7.0f} MB "
                f"(model built: {figures['rss_before_mb']:6.0f} MB)  step {figures['step_seconds']:6.1f} s"
            )


if __name__ == "__main__":
    main()
