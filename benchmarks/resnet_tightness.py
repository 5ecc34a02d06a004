"""Gradient-norm preservation of the ImageNet-scale LipschitzResNet: ``||grad f_k||`` of the predicted class.

    python benchmarks/resnet_tightness.py                 # init at 224x224, then training at small size
    python benchmarks/resnet_tightness.py --skip-init --steps 300 --width 0.25 --image-size 64

A 1-Lipschitz network explains and transports well only if ``||grad f_k(x)|| = 1`` (the docs'
Concepts page); this prints the median and 10th percentile of that norm, for the top output ``k`` of
each input, for ``LipschitzResNet`` and for ``LipschitzResNet(norm_preserving=True)``:

1. at initialization, at full size (width 1.0, 1000 classes, 224x224, ``--init-samples`` random
   images), with the certified evaluation weights;
2. during a short training run on synthetic images (``SyntheticImageDataModule``: the brightness
   encodes the class), at a reduced width and resolution so that a few hundred steps fit on a CPU
   (defaults: width 0.25, 64x64, 250 classes, so that the 128 -> 250 head keeps the standard
   network's ratio of 512 features to 1000 classes), with the ImageNet recipe's soft hKR loss
   (margin 0.05, hinge weight 500, temperature 200) and Adam at lr 1e-3, batch 32; the norms are
   measured on held-out synthetic images every ``--every`` steps, with the accuracy there.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lightning_ot.data import SyntheticImageDataModule
from lightning_ot.losses import SoftHKRLoss
from lightning_ot.models import LipschitzResNet
from lightning_ot.nn import gradient_norms

VARIANTS = {"standard": False, "norm-preserving": True}


def norm_figures(model: torch.nn.Module, images: torch.Tensor, chunk: int = 16) -> dict[str, float]:
    """Median and 10th percentile of ``||grad f_k||`` (top output) with the certified eval weights."""
    model.eval()
    try:
        norms = torch.cat([gradient_norms(model, part) for part in images.split(chunk)])
    finally:
        model.train()
    return {"median": float(norms.median()), "p10": float(norms.quantile(0.1)), "count": len(norms)}


def at_initialization(samples: int, image_size: int) -> dict[str, dict[str, float]]:
    images = torch.rand(samples, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
    results = {}
    print(
        f"== at initialization: width 1.0, 1000 classes, {image_size}x{image_size}, {samples} random images"
    )
    for name, norm_preserving in VARIANTS.items():
        torch.manual_seed(0)
        model = LipschitzResNet(3, 1000, norm_preserving=norm_preserving)
        start = time.perf_counter()
        figures = norm_figures(model, images, chunk=4)
        results[name] = figures
        print(
            f"  {name:16s} ||grad f_k||: median {figures['median']:.4f}, 10th percentile {figures['p10']:.4f} "
            f"({time.perf_counter() - start:.0f} s with the certification)"
        )
    return results


def during_training(
    width: float, image_size: int, num_classes: int, steps: int, every: int, batch_size: int, held_out: int
) -> dict[str, list[dict[str, float]]]:
    data = SyntheticImageDataModule(
        (3, image_size, image_size), num_classes=num_classes, num_samples=4096, batch_size=batch_size
    )
    data.setup("fit")
    assert data.val_dataset is not None
    test_images, test_labels = (tensor[:held_out] for tensor in data.val_dataset.tensors)
    print(
        f"\n== training on synthetic images: width {width:g}, {image_size}x{image_size}, {num_classes} classes, "
        f"batch {batch_size}, soft hKR (0.05, 500, 200), Adam 1e-3; {held_out} held-out images"
    )
    results: dict[str, list[dict[str, float]]] = {}
    for name, norm_preserving in VARIANTS.items():
        torch.manual_seed(0)
        model = LipschitzResNet(3, num_classes, width_multiplier=width, norm_preserving=norm_preserving)
        loss_fn = SoftHKRLoss(margin=0.05, hinge_weight=500.0, temperature=200.0)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        history: list[dict[str, float]] = []
        step, seconds = 0, 0.0
        loader = iter(())
        while True:
            if step % every == 0 or step == steps:
                figures = norm_figures(model, test_images)
                model.eval()
                with torch.no_grad():
                    accuracy = float((model(test_images).argmax(dim=1) == test_labels).float().mean())
                model.train()
                figures.update(step=step, accuracy=accuracy, seconds_per_step=seconds / max(step, 1))
                history.append(figures)
                print(
                    f"  {name:16s} step {step:4d}: ||grad f_k|| median {figures['median']:.4f}, 10th "
                    f"percentile {figures['p10']:.4f}; held-out accuracy {100 * accuracy:5.1f} %",
                    flush=True,
                )
            if step == steps:
                break
            try:
                images, labels = next(loader)
            except StopIteration:
                loader = iter(data.train_dataloader())
                images, labels = next(loader)
            start = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            loss_fn(model(images), labels).backward()
            optimizer.step()
            seconds += time.perf_counter() - start
            step += 1
        print(f"  {name:16s} {1000 * seconds / max(steps, 1):.0f} ms per training step")
        results[name] = history
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--skip-init", action="store_true", help="skip the full-size figures at initialization"
    )
    parser.add_argument("--init-samples", type=int, default=16)
    parser.add_argument("--init-image-size", type=int, default=224)
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--num-classes", type=int, default=250)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--every", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--held-out", type=int, default=128)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--json", type=Path, help="write the figures to this file")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    load = os.getloadavg()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), load average {load[0]:.1f}")
    results: dict = {}
    if not args.skip_init:
        results["initialization"] = at_initialization(args.init_samples, args.init_image_size)
    if args.steps >= 0:
        results["training"] = during_training(
            args.width,
            args.image_size,
            args.num_classes,
            args.steps,
            args.every,
            args.batch_size,
            args.held_out,
        )
        final = {name: history[-1] for name, history in results["training"].items()}
        print(
            "\nafter training: "
            + "; ".join(
                f"{name} median {figures['median']:.4f} (p10 {figures['p10']:.4f}), accuracy "
                f"{100 * figures['accuracy']:.1f} %"
                for name, figures in final.items()
            )
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
