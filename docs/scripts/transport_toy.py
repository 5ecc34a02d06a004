"""Make ``docs/figures/transport_toy.png``: the transport plan of an OTNN on a 2-D two-class toy.

Trains a 1-Lipschitz MLP with the binary hKR loss on scikit-learn's two moons through
:class:`~lightning_ot.OTClassifier` and a Lightning ``Trainer``, then draws the level sets of ``f``,
the decision boundary, and for a few points of each class the transport ``x - t grad f(x)``: to the
boundary (``t = f(x)``) and to the mirror image across it (``t = 2 f(x)``).

    python docs/scripts/transport_toy.py [--output docs/figures/transport_toy.png] [--epochs 150]

About a minute on 2 CPU cores.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import lightning.pytorch as pl
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
from sklearn.datasets import make_moons
from torch.utils.data import DataLoader, TensorDataset

from lightning_ot import OTClassifier
from lightning_ot.losses import HKRLoss
from lightning_ot.models import LipschitzMLP

DEFAULT_OUTPUT = Path(__file__).resolve().parent.parent / "figures" / "transport_toy.png"


def train(epochs: int, seed: int) -> tuple[OTClassifier, np.ndarray, np.ndarray]:
    pl.seed_everything(seed, verbose=False)
    points, labels = make_moons(n_samples=1024, noise=0.08, random_state=seed)
    points = points.astype(np.float32)
    dataset = TensorDataset(torch.from_numpy(points), torch.from_numpy(labels))
    loader = DataLoader(dataset, batch_size=256, shuffle=True, drop_last=True)
    model = OTClassifier(
        LipschitzMLP(in_features=2, num_outputs=1, hidden_features=(64, 64, 64)),
        num_classes=2,
        loss=HKRLoss(margin=0.1, hinge_weight=20.0),
        optimizer=lambda parameters: torch.optim.Adam(parameters, lr=5e-3),
    )
    trainer = pl.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, train_dataloaders=loader)
    return model.eval(), points, labels


def value_and_gradient(model: OTClassifier, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    points = points.clone().requires_grad_(True)
    values = model(points).reshape(-1)
    (gradient,) = torch.autograd.grad(values.sum(), points)
    return values.detach(), gradient


def draw(model: OTClassifier, points: np.ndarray, labels: np.ndarray, output: Path, seed: int) -> None:
    low, high = points.min(axis=0) - 0.6, points.max(axis=0) + 0.6
    grid_x, grid_y = np.meshgrid(np.linspace(low[0], high[0], 300), np.linspace(low[1], high[1], 300))
    grid = torch.from_numpy(np.stack([grid_x.ravel(), grid_y.ravel()], axis=1).astype(np.float32))
    with torch.no_grad():
        levels = model(grid).reshape(grid_x.shape).numpy()

    rng = np.random.default_rng(seed)
    chosen = np.concatenate([rng.choice(np.flatnonzero(labels == c), 12, replace=False) for c in (0, 1)])
    sources = torch.from_numpy(points[chosen])
    values, gradient = value_and_gradient(model, sources)
    boundary = (sources - values[:, None] * gradient).numpy()
    mirror = (sources - 2 * values[:, None] * gradient).numpy()
    gradient_norm = gradient.norm(dim=1)

    figure, axis = plt.subplots(figsize=(7.5, 5.2), dpi=130)
    bound = float(np.abs(levels).max())
    contour = axis.contourf(
        grid_x, grid_y, levels, levels=30, cmap="RdBu_r", vmin=-bound, vmax=bound, alpha=0.75
    )
    axis.contour(grid_x, grid_y, levels, levels=[0.0], colors="black", linewidths=2)
    figure.colorbar(contour, ax=axis, label="f(x)")
    for label, color, name in ((0, "#1f4e9c", "class -1"), (1, "#b2182b", "class +1")):
        mask = labels == label
        axis.scatter(points[mask, 0], points[mask, 1], s=5, color=color, alpha=0.35, label=name)
    source_array = sources.numpy()
    for start, middle, end in zip(source_array, boundary, mirror, strict=True):
        axis.annotate("", xy=end, xytext=start, arrowprops={"arrowstyle": "->", "color": "0.15", "lw": 0.9})
        axis.plot(*middle, marker="o", markersize=3.5, color="gold", markeredgecolor="black", lw=0)
    axis.plot([], [], marker="o", color="gold", markeredgecolor="black", lw=0, label="x - f(x) grad f(x)")
    axis.plot([], [], color="0.15", label="x -> x - 2 f(x) grad f(x)")
    axis.set_title(
        "OTNN on two moons: level sets of f, boundary f = 0, transports\n"
        f"input-gradient norm at the sources: mean {gradient_norm.mean():.3f}, min {gradient_norm.min():.3f}",
        fontsize=10,
    )
    axis.set_xlim(low[0], high[0])
    axis.set_ylim(low[1], high[1])
    axis.set_aspect("equal")
    axis.legend(loc="lower left", fontsize=8, framealpha=0.9)
    figure.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--epochs", type=int, default=150)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    model, points, labels = train(args.epochs, args.seed)
    draw(model, points, labels, args.output, args.seed)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
