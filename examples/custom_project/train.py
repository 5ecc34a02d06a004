"""Train the two-moons OTNN: ``python train.py [--max-epochs N] [--output-dir DIR]``.

Prints the validation accuracy, the certified robust accuracy, and the mean input-gradient norm
(close to 1 for an optimal-transport network), and writes them to ``DIR/metrics.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import lightning.pytorch as pl
import torch
from moons_data import TwoMoonsDataModule
from moons_model import MoonsBackbone, MoonsClassifier

from lightning_ot.losses import HKRLoss


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description="Train a 1-Lipschitz classifier on two moons.")
    parser.add_argument("--max-epochs", type=int, default=30)
    parser.add_argument("--output-dir", type=Path, default=Path("moons_output"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    pl.seed_everything(args.seed, verbose=False)
    data = TwoMoonsDataModule(seed=args.seed)
    model = MoonsClassifier(
        MoonsBackbone(),
        num_classes=2,
        loss=HKRLoss(margin=0.1, hinge_weight=20.0),
        optimizer=lambda parameters: torch.optim.Adam(parameters, lr=5e-3),
        certified_eps=(0.02, 0.05, 0.1),
    )
    trainer = pl.Trainer(
        max_epochs=args.max_epochs,
        accelerator="cpu",
        default_root_dir=args.output_dir,
        logger=pl.loggers.CSVLogger(args.output_dir),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, datamodule=data)

    points = data.val_dataset.tensors[0].clone().requires_grad_(True)
    (gradient,) = torch.autograd.grad(model(points).sum(), points)
    metrics = {
        name: float(value) for name, value in trainer.callback_metrics.items() if name.startswith("val/")
    }
    metrics["gradient_norm_mean"] = float(gradient.norm(dim=1).mean())
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    for name, value in sorted(metrics.items()):
        print(f"{name:28s} {value:.4f}")
    return metrics


if __name__ == "__main__":
    main()
