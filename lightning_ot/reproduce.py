"""Measure the claims of Serrurier et al. (NeurIPS 2023) on an OTNN and its unconstrained twin.

    python -m lightning_ot.reproduce [--recipe quickstart | --config FILE] [--epochs N]
        [--output-dir reproduction] [--skip-twin-baselines] [--twin-lr LR] [--save-networks]

Trains the model of a recipe or of any LightningCLI config file (a 1-Lipschitz backbone with an hKR
loss) and the *unconstrained twin*: the
same architecture with plain layers and ReLU (:func:`~lightning_ot.models.unconstrained_twin`), trained
with cross-entropy on the same data with the same optimizer and epochs (``--twin-lr`` gives it its own
learning rate: a plain ReLU network can die at the OTNN's). Then measures, for each
network, on the validation set:

- clean accuracy, and certified robust accuracy at several L2 radii (the twin's certificate uses the
  upper bound of its Lipschitz constant from :func:`~lightning_ot.nn.lipschitz_audit`);
- the explanation metrics of its saliency map (MuFidelity, Deletion, Insertion, stability, sparseness)
  and, for the twin, of SmoothGrad and Integrated Gradients too (the paper's claim: the plain gradient
  of an OTNN is as good an explanation as these elaborate methods on an unconstrained network; these
  two rows take most of the run time, ``--skip-twin-baselines`` leaves them out). The saliency map is
  the *signed* gradient ``grad f_k``, and every metric but Sparseness (which takes absolute values)
  is computed on the signed map; Xplique's ``Saliency`` explainer takes the absolute value (and the
  maximum over channels), which changes MuFidelity;
- from :func:`~lightning_ot.explain.explain`: how tight the network is (median and 10th percentile
  of ``||grad f_k||`` of the predicted class, median of the distance to the boundary counterfactual
  over the certified radius, for Newton's boundary point and for the nearest boundary point found)
  and how its input gradient transports inputs to the other class: the
  rate at which a move of 1x and 2x the first-order boundary distance along the gradient flips the
  class, the rate at which the boundary search lands on the boundary, and the distance moved;
- the distance between its saliency map and its SmoothGrad map (the paper: small for an OTNN, whose
  gradient is already smooth; large for an unconstrained network).

It writes ``results.json``, ``table.md`` (markdown) and the figures ``saliency.png`` and
``transports.png`` (rendered by :func:`~lightning_ot.explain.render_grid`) to ``--output-dir``, and
with ``--save-networks`` the trained networks (``otnn.ckpt``, ``twin.pt``). On the quickstart
recipe (scikit-learn's 8x8 digits) the whole run takes a few minutes on a CPU.
"""

from __future__ import annotations

import argparse
import json
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from lightning_ot.explain import (
    BoundarySearch,
    Explanation,
    caption_lines,
    explain,
    heatmap_panels,
    image_panels,
    integrated_gradients,
    render_explanation,
    render_grid,
    saliency,
    smoothgrad,
)
from lightning_ot.explain._common import class_score
from lightning_ot.explain_cli import validation_tensors
from lightning_ot.metrics import (
    AverageStability,
    Deletion,
    Insertion,
    MuFidelity,
    Sparseness,
    certified_radius,
)
from lightning_ot.metrics._xai import spearman
from lightning_ot.models import unconstrained_twin
from lightning_ot.module import OTClassifier
from lightning_ot.nn import lipschitz_audit

__all__ = [
    "CrossEntropy",
    "ExplanationScores",
    "NetworkResults",
    "format_table",
    "main",
    "reproduce",
    "spearman_distance",
    "untrained_networks",
]

DEFAULT_RADII: tuple[float, ...] = (0.1, 0.25, 0.5, 1.0)
PAPER_TABLE = """\
| FashionMNIST (paper) | OTNN | unconstrained |
|---|---|---|
| clean accuracy | 88.6 % | 88.5 % |
| MuFidelity of the saliency map (higher is better) | 0.156 | -0.001 |
| stability, Spearman distance (lower is better) | 0.59 | 0.91 |
"""

Explainer = Callable[[nn.Module, Tensor, Tensor], Tensor]


class CrossEntropy(nn.Module):
    """Cross-entropy for (B, C) logits, binary cross-entropy for (B, 1) logits (labels 0/1 or -1/+1).

    The loss of the unconstrained twin.

    Example:
        >>> CrossEntropy()(torch.zeros(2, 1), torch.tensor([0, 1]))
        tensor(0.6931)
    """

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        if logits.ndim == 2 and logits.shape[1] == 1:
            return nn.functional.binary_cross_entropy_with_logits(logits[:, 0], (target > 0).to(logits.dtype))
        return nn.functional.cross_entropy(logits, target.long())


@dataclass
class ExplanationScores:
    """Explanation metrics of one explanation method on one network (Xplique definitions).

    ``deletion`` and ``insertion`` are the areas under the mean score curve divided by the mean clean
    score of the explained class, so that networks whose logits have different scales compare.
    """

    mu_fidelity: float
    deletion: float
    insertion: float
    stability: float
    sparseness: float


@dataclass
class NetworkResults:
    """Everything measured on one network.

    ``gradient_norm`` and ``gradient_norm_p10`` are the median and 10th percentile of
    ``||grad f_k||`` (predicted class ``k``), ``pair_gradient_norm`` the median of
    ``||grad (f_k - f_j)||`` (runner-up ``j``), ``tightness`` the median of the boundary
    counterfactual's distance over the certified radius (Newton steps along the gradient),
    ``nearest_tightness`` the same with the nearest boundary point found (``"nearest"`` mode of
    :func:`~lightning_ot.explain.counterfactual`: never above ``tightness``); ``boundary_distance`` and
    ``certified_radius`` are means (see :meth:`~lightning_ot.explain.Explanation.summary`).
    """

    name: str
    loss: str
    accuracy: float
    lipschitz: float | None
    certified_accuracy: dict[str, float]
    explanations: dict[str, ExplanationScores] = field(default_factory=dict)
    boundary_reached: float = math.nan
    flip_rate_1x: float = math.nan
    flip_rate_2x: float = math.nan
    boundary_distance: float = math.nan
    certified_radius: float = math.nan
    gradient_norm: float = math.nan
    gradient_norm_p10: float = math.nan
    pair_gradient_norm: float = math.nan
    tightness: float = math.nan
    nearest_tightness: float = math.nan
    saliency_smoothgrad_distance: float = math.nan
    saliency_smoothgrad_cosine: float = math.nan
    train_seconds: float = math.nan


def untrained_networks(results: Sequence[NetworkResults], num_classes: int) -> list[str]:
    """Notes on the networks whose accuracy is within 5 points of chance: they did not learn, and
    their explanation and transport figures mean nothing (a ReLU twin can die at a high learning
    rate)."""
    chance = 1 / num_classes
    return [
        f"{result.name} did not learn (accuracy {100 * result.accuracy:.1f} %, chance {100 * chance:.1f} %): "
        "its explanation and transport figures are meaningless"
        for result in results
        if result.accuracy <= chance + 0.05
    ]


def spearman_distance(first: Tensor, second: Tensor) -> Tensor:
    """(B,) ``1 - rho``, with ``rho`` the Spearman rank correlation of each pair of flattened maps
    (tied values share their average rank, as in the Stability and MuFidelity metrics).

    0 for maps that order their features identically, 1 for unrelated ones, 2 for reversed ones.

    Example:
        >>> spearman_distance(torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[30.0, 20.0, 10.0]]))
        tensor([2.])
    """
    if first.shape != second.shape:
        raise ValueError(
            f"the maps must have the same shape, got {tuple(first.shape)} and {tuple(second.shape)}"
        )
    return (1.0 - spearman(first.flatten(1).double(), second.flatten(1).double())).float()


# --------------------------------------------------------------------------------------------------
# Building and training
# --------------------------------------------------------------------------------------------------


def _from_config(
    config: Path, overrides: Sequence[str], seed: int
) -> tuple[OTClassifier, pl.LightningDataModule, int]:
    from lightning_ot.fit import OTLightningCLI

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*LightningCLI's args parameter.*")
        cli = OTLightningCLI(
            OTClassifier,
            pl.LightningDataModule,
            run=False,
            # The networks are trained by `_train` below: no logger, no callback of the recipe's trainer.
            args=[
                "--config", str(config),
                # the networks' initialization follows `seed`, not the config's `seed_everything`
                f"--seed_everything={seed}",
                "--trainer.logger=false", "--trainer.callbacks=[]",
                *overrides,
            ],
        )  # fmt: skip
    if not isinstance(cli.model, OTClassifier):
        raise TypeError(
            f"the config {config} must define an OTClassifier model, got {type(cli.model).__name__}"
        )
    return cli.model, cli.datamodule, int(cli.trainer.max_epochs or 10)


def _with_learning_rate(
    optimizer_factory: Callable[..., Optimizer], learning_rate: float
) -> Callable[..., Optimizer]:
    """``optimizer_factory`` with every parameter group at ``learning_rate`` (a scheduler built on the
    optimizer afterwards starts from it)."""

    def build(parameters: Any) -> Optimizer:
        optimizer = optimizer_factory(parameters)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate
        return optimizer

    return build


def _train(
    model: OTClassifier, datamodule: pl.LightningDataModule, epochs: int, seed: int
) -> tuple[float, pl.Trainer]:
    pl.seed_everything(seed, verbose=False)
    trainer = pl.Trainer(
        max_epochs=epochs,
        accelerator="cpu" if not torch.cuda.is_available() else "auto",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )
    start = time.perf_counter()
    trainer.fit(model, datamodule=datamodule)
    return time.perf_counter() - start, trainer


# --------------------------------------------------------------------------------------------------
# Measurements
# --------------------------------------------------------------------------------------------------


@torch.no_grad()
def _logits(model: nn.Module, inputs: Tensor, batch_size: int = 512) -> Tensor:
    return torch.cat([model(chunk) for chunk in inputs.split(batch_size)])


def _labels(logits: Tensor) -> Tensor:
    if logits.shape[1] == 1:
        return (logits[:, 0] > 0).long()
    return logits.argmax(dim=1)


def _explain_network(
    model: nn.Module,
    inputs: Tensor,
    lipschitz: float | None,
    output_lipschitz: str,
    step_sizes: Sequence[float] = (1.0, 2.0),
    boundary_search: BoundarySearch = "newton",
) -> Explanation:
    """:func:`~lightning_ot.explain.explain` with the certificate of Lipschitz bound ``lipschitz``
    (NaN radii where there is none), boundary search of at most 10 Newton steps (and, with
    ``boundary_search="nearest"``, the nearest boundary point found from there)."""
    certificate: Any = lipschitz
    if lipschitz is None or not math.isfinite(lipschitz):

        def certificate(logits: Tensor) -> Tensor:
            return torch.full((logits.shape[0],), math.nan)

    return explain(
        model,
        inputs,
        certificate,
        output_lipschitz=output_lipschitz,  # type: ignore[arg-type]
        step_sizes=step_sizes,
        boundary_search=boundary_search,
    )


def _explanation_scores(
    model: nn.Module,
    inputs: Tensor,
    explained: Tensor,
    explainer: Callable[[Tensor, Tensor | None], Tensor],
    seed: int,
    mu_fidelity_samples: int,
    stability_samples: int,
    explanations: Tensor | None = None,
) -> ExplanationScores:
    if explanations is None:
        explanations = explainer(inputs, explained)
    explanations = explanations.detach()
    clean_score = float(class_score(_logits(model, inputs), explained).mean())
    deletion, insertion = Deletion(model), Insertion(model)
    fidelity = MuFidelity(model, num_samples=mu_fidelity_samples, seed=seed)
    stability = AverageStability(explainer, num_samples=stability_samples, distance="spearman", seed=seed)
    sparseness = Sparseness()
    deletion.update(inputs, explanations, explained)
    insertion.update(inputs, explanations, explained)
    fidelity.update(inputs, explanations, explained)
    stability.update(inputs, explained, explanations=explanations)
    sparseness.update(explanations)
    scale = clean_score if abs(clean_score) > 1e-12 else math.nan
    return ExplanationScores(
        mu_fidelity=float(fidelity.compute()),
        deletion=float(deletion.compute()) / scale,
        insertion=float(insertion.compute()) / scale,
        stability=float(stability.compute()),
        sparseness=float(sparseness.compute()),
    )


def _measure(
    name: str,
    loss_name: str,
    model: nn.Module,
    lipschitz: float | None,
    output_lipschitz: str,
    inputs: Tensor,
    targets: Tensor,
    explained_count: int,
    radii: Sequence[float],
    methods: dict[str, Explainer],
    seed: int,
    mu_fidelity_samples: int,
    stability_samples: int,
    smoothgrad_samples: int,
) -> NetworkResults:
    model.eval()
    logits = _logits(model, inputs)
    predicted = _labels(logits)
    correct = predicted == (targets > 0).long() if logits.shape[1] == 1 else predicted == targets
    certified: dict[str, float] = {}
    radius = torch.full((len(inputs),), math.nan)
    if lipschitz is not None and math.isfinite(lipschitz):
        radius = certified_radius(logits, lipschitz, output_lipschitz)  # type: ignore[arg-type]
    for eps in radii:
        certified[f"{eps:g}"] = float((correct & (radius > eps)).float().mean()) if lipschitz else math.nan
    results = NetworkResults(
        name=name,
        loss=loss_name,
        accuracy=float(correct.float().mean()),
        lipschitz=lipschitz,
        certified_accuracy=certified,
    )

    sample = inputs[:explained_count]
    explained = predicted[:explained_count]
    explanation = _explain_network(model, sample, lipschitz, output_lipschitz, step_sizes=(1.0, 2.0))
    # Binary: the explained score of class 0 is -f, so its saliency is -grad f (explain gives grad f).
    plain = explanation.saliency if logits.shape[1] > 1 else saliency(model, sample, explained)
    for method, explainer in methods.items():
        results.explanations[method] = _explanation_scores(
            model,
            sample,
            explained,
            partial(explainer, model),
            seed,
            mu_fidelity_samples,
            stability_samples,
            explanations=plain if explainer is saliency else None,
        )

    summary = explanation.summary()
    results.boundary_reached = summary["boundary_reached"]
    results.flip_rate_1x = float(explanation.transport_flipped[:, 0].float().mean())
    results.flip_rate_2x = float(explanation.transport_flipped[:, 1].float().mean())
    results.boundary_distance = float(explanation.boundary_distance.mean())
    results.gradient_norm = summary["gradient_norm"]
    results.gradient_norm_p10 = summary["gradient_norm_p10"]
    results.pair_gradient_norm = summary["pair_gradient_norm"]
    results.tightness = summary["tightness"]
    results.certified_radius = float(radius[:explained_count].mean())
    nearest = _explain_network(model, sample, lipschitz, output_lipschitz, boundary_search="nearest")
    results.nearest_tightness = nearest.summary()["tightness"]

    generator = torch.Generator(device=sample.device).manual_seed(seed)
    smooth = smoothgrad(model, sample, explained, num_samples=smoothgrad_samples, generator=generator)
    results.saliency_smoothgrad_distance = float(spearman_distance(plain, smooth).mean())
    results.saliency_smoothgrad_cosine = float(
        nn.functional.cosine_similarity(plain.flatten(1), smooth.flatten(1), dim=1).mean()
    )
    return results


# --------------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------------


def _number(value: float | None, digits: int = 3, percent: bool = False) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{100 * value:.1f} %" if percent else f"{value:.{digits}f}"


SALIENCY_NOTE = (
    "saliency = the signed input gradient grad f_k of the predicted class k (binary: the signed "
    "evidence for it); MuFidelity, Deletion, Insertion and Stability are computed on the signed map, "
    "Sparseness on its absolute values. (Xplique's Saliency explainer returns |grad f_k|, maximum over "
    "channels: the paper's numbers may be on absolute maps.)"
)


def format_table(results: Sequence[NetworkResults], settings: dict[str, Any] | None = None) -> str:
    """Markdown tables of the results: accuracy, robustness, tightness and transport; explanation
    metrics (with the sign convention of the saliency maps)."""
    header = "| | " + " | ".join(f"{r.name} ({r.loss})" for r in results) + " |"
    rule = "|---|" + "---|" * len(results)
    rows = [header, rule]

    def row(label: str, values: Sequence[str]) -> None:
        rows.append(f"| {label} | " + " | ".join(values) + " |")

    row("clean accuracy", [_number(r.accuracy, percent=True) for r in results])
    row("Lipschitz bound used for certificates", [_number(r.lipschitz, 2) for r in results])
    for eps in results[0].certified_accuracy:
        row(
            f"certified robust accuracy, L2 radius {eps}",
            [_number(r.certified_accuracy[eps], percent=True) for r in results],
        )
    row("median ‖∇f_k‖ of the predicted class (1 is tight)", [_number(r.gradient_norm) for r in results])
    row("10th percentile of ‖∇f_k‖", [_number(r.gradient_norm_p10) for r in results])
    row("median ‖∇(f_k − f_j)‖, runner-up j", [_number(r.pair_gradient_norm) for r in results])
    row(
        "median boundary counterfactual distance / certified radius (1 is tight)",
        [_number(r.tightness) for r in results],
    )
    row(
        "median nearest boundary point found / certified radius (1 is tight)",
        [_number(r.nearest_tightness) for r in results],
    )
    row(
        "transport of 1x the first-order boundary distance flips the class",
        [_number(r.flip_rate_1x, percent=True) for r in results],
    )
    row(
        "transport of 2x the first-order boundary distance flips the class",
        [_number(r.flip_rate_2x, percent=True) for r in results],
    )
    row(
        "boundary search (≤ 10 steps) reaches the boundary",
        [_number(r.boundary_reached, percent=True) for r in results],
    )
    row("mean L2 distance moved to the boundary", [_number(r.boundary_distance) for r in results])
    row("mean certified radius (same samples)", [_number(r.certified_radius) for r in results])
    row(
        "saliency vs SmoothGrad, Spearman distance (lower: closer)",
        [_number(r.saliency_smoothgrad_distance) for r in results],
    )
    row("saliency vs SmoothGrad, cosine similarity", [_number(r.saliency_smoothgrad_cosine) for r in results])

    metrics = [
        ("MuFidelity ↑", "mu_fidelity"),
        ("Deletion ↓", "deletion"),
        ("Insertion ↑", "insertion"),
        ("Spearman stability ↓", "stability"),
        ("Sparseness ↑", "sparseness"),
    ]
    explanation_rows = [
        "| network | explanation (signed map) | " + " | ".join(label for label, _ in metrics) + " |",
        "|---|---|" + "---|" * len(metrics),
    ]
    for result in results:
        for method, scores in result.explanations.items():
            values = [_number(getattr(scores, key)) for _, key in metrics]
            explanation_rows.append(f"| {result.name} | {method} | " + " | ".join(values) + " |")

    text = "\n".join(rows) + "\n\n" + "\n".join(explanation_rows) + "\n\n" + SALIENCY_NOTE + "\n"
    if settings:
        text += "\n" + "; ".join(f"{key}: {value}" for key, value in settings.items()) + "\n"
    return text


def _figures(
    output_dir: Path,
    models: dict[str, nn.Module],
    certificates: dict[str, tuple[float | None, str]],
    inputs: Tensor,
    labels: Tensor,
    seed: int,
) -> list[Path]:
    """``saliency.png`` (input, each network's saliency and SmoothGrad, the twin's Integrated
    Gradients) and ``transports.png`` (:func:`~lightning_ot.explain.render_explanation` of each
    network, one above the other)."""
    from PIL import Image

    if inputs.ndim != 4:
        return []
    names = list(models)
    explanations = {
        name: _explain_network(model, inputs, *certificates[name], step_sizes=(0.5, 1.0, 1.5, 2.0))
        for name, model in models.items()
    }
    columns, titles = [image_panels(inputs)], ["input"]
    for name, model in models.items():
        explained = _labels(explanations[name].logits)
        generator = torch.Generator(device=inputs.device).manual_seed(seed)
        columns += [
            heatmap_panels(saliency(model, inputs, explained)),
            heatmap_panels(smoothgrad(model, inputs, explained, generator=generator)),
        ]
        titles += [f"{name} grad", f"{name} SG"]
    twin = names[-1]
    twin_explained = _labels(explanations[twin].logits)
    columns.append(heatmap_panels(integrated_gradients(models[twin], inputs, twin_explained)))
    titles.append(f"{twin} IG")
    row_labels = [
        f"true {int(label)}\n"
        + "\n".join(f"{name}: {int(explanations[name].prediction[index])}" for name in names)
        for index, label in enumerate(labels)
    ]
    paths = [output_dir / "saliency.png", output_dir / "transports.png"]
    Image.fromarray(render_grid(columns, row_labels, titles)).save(paths[0])

    grids = []
    for name, explanation in explanations.items():
        captions = [f"{name}, " + caption for caption in caption_lines(explanation, labels)]
        grids.append(render_explanation(explanation, captions, value_range=(0.0, 1.0)))
    width = max(grid.shape[1] for grid in grids)
    stacked = np.concatenate(
        [np.pad(grid, ((0, 8), (0, width - grid.shape[1]), (0, 0)), constant_values=255) for grid in grids]
    )
    Image.fromarray(stacked).save(paths[1])
    return paths


# --------------------------------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------------------------------


def reproduce(
    recipe: str = "quickstart",
    epochs: int | None = None,
    output_dir: str | Path = "reproduction",
    num_explained: int = 100,
    radii: Sequence[float] = DEFAULT_RADII,
    seed: int = 0,
    overrides: Sequence[str] = (),
    mu_fidelity_samples: int = 200,
    stability_samples: int = 20,
    smoothgrad_samples: int = 50,
    figures: bool = True,
    config: str | Path | None = None,
    twin_baselines: bool = True,
    twin_copies_weights: bool = True,
    save_networks: bool = False,
    twin_learning_rate: float | None = None,
) -> list[NetworkResults]:
    """Train the OTNN of a recipe or config and its unconstrained twin, measure both, write the table
    and figures.

    Args:
        recipe: the recipe whose model (backbone, loss, optimizer) and data module are used.
        epochs: training epochs of each network; default the config's ``max_epochs``.
        output_dir: where ``results.json``, ``table.md`` and the figures are written.
        num_explained: validation samples (drawn at random with ``seed``) on which explanations and
            transports are measured.
        radii: L2 radii of the certified robust accuracy.
        seed: seed of the networks' initialization, of the sample draw and of the metrics' random
            draws (it replaces the config's ``seed_everything``). The data module's own seed
            (shuffling, augmentation, any train/validation split) stays the config's; override it
            with ``--data.init_args.seed=N`` to vary it too.
        overrides: LightningCLI overrides of the config, e.g. ``["--data.init_args.batch_size=128"]``.
        mu_fidelity_samples, stability_samples, smoothgrad_samples: sample counts of the metrics
            (Xplique's defaults: 200, 20, 50).
        figures: write ``saliency.png`` and ``transports.png``.
        config: a LightningCLI YAML file to use instead of ``recipe`` (any file, not only a shipped
            recipe); it must define an ``OTClassifier`` model and a data module.
        twin_baselines: measure the twin's SmoothGrad and Integrated Gradients rows (most of the run
            time goes there: each needs ``stability_samples`` x their own sample counts of gradients
            per explained input).
        twin_copies_weights: start the twin from the OTNN's initial (orthogonal) weights, so that both
            start from the same point; ``False``: PyTorch's default initialization (deep narrow plain
            networks such as the twin of :class:`~lightning_ot.models.NormPreservingConvNet` then
            stay at chance).
        save_networks: also write the trained networks: ``otnn.ckpt``, a Lightning checkpoint
            (``OTClassifier.load_from_checkpoint``, or ``python -m lightning_ot.explain --ckpt_path``),
            and ``twin.pt``, the state dict of the twin's backbone, which loads into
            ``unconstrained_twin(OTClassifier.load_from_checkpoint("otnn.ckpt").backbone)``.
        twin_learning_rate: the learning rate of the twin's optimizer (> 0); ``None``: the config's,
            as the OTNN's. The optimizer, its other settings and the schedule stay the config's.

    Returns:
        the results of the OTNN, then of the twin.
    """
    if num_explained < 2:
        raise ValueError(f"`num_explained` must be >= 2, got {num_explained}")
    if epochs is not None and epochs < 1:
        raise ValueError(f"`epochs` must be >= 1, got {epochs}")
    if not radii or any(eps < 0 for eps in radii):
        raise ValueError(f"`radii` must be a non-empty list of numbers >= 0, got {list(radii)}")
    if twin_learning_rate is not None and not (twin_learning_rate > 0 and math.isfinite(twin_learning_rate)):
        raise ValueError(f"`twin_learning_rate` must be a finite number > 0, got {twin_learning_rate}")
    if config is not None:
        config_path = Path(config)
        if not config_path.is_file():
            raise ValueError(f"`config` must be an existing LightningCLI YAML file, got {config}")
        source = str(config_path)
    else:
        from lightning_ot.recipes import RecipeNotFoundError, recipe_path

        try:
            config_path = recipe_path(recipe)
        except RecipeNotFoundError as error:
            raise ValueError(str(error)) from error
        source = recipe
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)

    pl.seed_everything(seed, verbose=False)
    otnn, datamodule, config_epochs = _from_config(config_path, overrides, seed)
    epochs = epochs or config_epochs
    twin_optimizer = otnn.optimizer_factory
    if twin_learning_rate is not None:
        twin_optimizer = _with_learning_rate(twin_optimizer, twin_learning_rate)
    twin = OTClassifier(
        unconstrained_twin(otnn.backbone, copy_weights=twin_copies_weights),
        num_classes=otnn.num_classes,
        loss=CrossEntropy(),
        optimizer=twin_optimizer,
        lr_scheduler=otnn.lr_scheduler_factory,
        audit_lipschitz=False,
    )
    otnn_seconds, otnn_trainer = _train(otnn, datamodule, epochs, seed)
    twin_seconds, _ = _train(twin, datamodule, epochs, seed)
    if save_networks:
        otnn_trainer.save_checkpoint(output_dir / "otnn.ckpt")
        torch.save(twin.backbone.state_dict(), output_dir / "twin.pt")

    inputs, targets = validation_tensors(datamodule)
    # explained samples drawn at random: validation sets are often sorted by class (mnist5k is)
    order = torch.randperm(len(inputs), generator=torch.Generator().manual_seed(seed))
    inputs, targets = inputs[order], targets[order]
    explained_count = min(num_explained, len(inputs))
    input_shape = tuple(inputs.shape[1:])
    twin.eval()
    twin_bound = lipschitz_audit(twin.backbone, input_shape, empirical=False).upper_bound

    common = {
        "inputs": inputs,
        "targets": targets,
        "explained_count": explained_count,
        "radii": radii,
        "seed": seed,
        "mu_fidelity_samples": mu_fidelity_samples,
        "stability_samples": stability_samples,
        "smoothgrad_samples": smoothgrad_samples,
    }
    twin_methods: dict[str, Explainer] = {"saliency": saliency}
    if twin_baselines:
        twin_methods["SmoothGrad"] = partial(smoothgrad, num_samples=smoothgrad_samples)
        twin_methods["Integrated Gradients"] = integrated_gradients
    otnn_results = _measure(
        "OTNN", "hKR", otnn.backbone, otnn.lipschitz, otnn.output_lipschitz,
        methods={"saliency": saliency}, **common,
    )  # fmt: skip
    twin_results = _measure(
        "unconstrained twin", "cross-entropy", twin.backbone, twin_bound, "joint",
        methods=twin_methods, **common,
    )  # fmt: skip
    otnn_results.train_seconds, twin_results.train_seconds = otnn_seconds, twin_seconds
    results = [otnn_results, twin_results]

    settings = {
        "config": source,
        "epochs": epochs,
        "validation samples": len(inputs),
        "explained samples": explained_count,
        "seed": seed,
        "MuFidelity subsets": mu_fidelity_samples,
        "stability neighbours": stability_samples,
        "SmoothGrad samples": smoothgrad_samples,
        "twin baselines": "measured" if twin_baselines else "skipped",
        "twin initialization": "the OTNN's initial weights" if twin_copies_weights else "PyTorch's default",
        "twin learning rate": "the OTNN's" if twin_learning_rate is None else f"{twin_learning_rate:g}",
    }
    failures = untrained_networks(results, max(otnn.num_classes, 2))
    for failure in failures:
        warnings.warn(
            f"{failure}; try another --seed or a lower learning rate (the twin's alone: --twin-lr; "
            "both: --override=--model.init_args.optimizer.init_args.lr=...)",
            stacklevel=2,
        )
    if failures:
        settings["warning"] = "; ".join(failures)
    table = format_table(results, settings)
    (output_dir / "table.md").write_text(table)
    (output_dir / "results.json").write_text(
        json.dumps({"settings": settings, "results": [asdict(result) for result in results]}, indent=2)
    )
    if figures:
        shown = min(6, explained_count)
        models = {"OTNN": otnn.backbone.eval(), "twin": twin.backbone.eval()}
        certificates = {"OTNN": (otnn.lipschitz, otnn.output_lipschitz), "twin": (twin_bound, "joint")}
        _figures(output_dir, models, certificates, inputs[:shown], targets[:shown], seed)
    return results


def main(args: Sequence[str] | None = None) -> list[NetworkResults]:
    """Command line; see the module docstring."""
    parser = argparse.ArgumentParser(
        prog="python -m lightning_ot.reproduce",
        description="Train an OTNN and its unconstrained twin; measure the claims of Serrurier et al. 2023.",
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--recipe", default="quickstart", help="recipe giving the model and the data")
    source.add_argument(
        "--config", type=Path, default=None, help="any LightningCLI YAML file giving the model and the data"
    )
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (default: the config's)")
    parser.add_argument("--output-dir", type=Path, default=Path("reproduction"))
    parser.add_argument("--num-explained", type=int, default=100, help="samples explained and transported")
    parser.add_argument("--radii", type=float, nargs="+", default=list(DEFAULT_RADII))
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the initialization (replaces the config's seed_everything), of the samples and metrics",
    )
    parser.add_argument("--mu-fidelity-samples", type=int, default=200)
    parser.add_argument("--stability-samples", type=int, default=20)
    parser.add_argument("--smoothgrad-samples", type=int, default=50)
    parser.add_argument(
        "--skip-twin-baselines",
        action="store_true",
        help="leave out the twin's SmoothGrad and Integrated Gradients rows (most of the run time)",
    )
    parser.add_argument(
        "--twin-default-init",
        action="store_true",
        help="initialize the twin with PyTorch's defaults instead of the OTNN's initial weights",
    )
    parser.add_argument(
        "--twin-lr",
        type=float,
        default=None,
        metavar="LR",
        help="learning rate of the twin's optimizer (default: the config's, as the OTNN's)",
    )
    parser.add_argument("--no-figures", action="store_true")
    parser.add_argument(
        "--save-networks",
        action="store_true",
        help="also write the trained OTNN (otnn.ckpt, a Lightning checkpoint) and the twin's backbone (twin.pt)",
    )
    parser.add_argument(
        "--override",
        action="append",
        default=[],
        metavar="--KEY=VALUE",
        help="LightningCLI override of the config, e.g. --override=--data.init_args.batch_size=128",
    )
    options = parser.parse_args(args)
    try:
        results = reproduce(
            recipe=options.recipe,
            epochs=options.epochs,
            output_dir=options.output_dir,
            num_explained=options.num_explained,
            radii=options.radii,
            seed=options.seed,
            overrides=options.override,
            mu_fidelity_samples=options.mu_fidelity_samples,
            stability_samples=options.stability_samples,
            smoothgrad_samples=options.smoothgrad_samples,
            figures=not options.no_figures,
            config=options.config,
            twin_baselines=not options.skip_twin_baselines,
            twin_copies_weights=not options.twin_default_init,
            save_networks=options.save_networks,
            twin_learning_rate=options.twin_lr,
        )
    except ValueError as error:
        parser.exit(2, f"error: {error}\n")
    print((options.output_dir / "table.md").read_text())
    written = ["table.md", "results.json"]
    written += [] if options.no_figures else ["the figures"]
    written += ["otnn.ckpt", "twin.pt"] if options.save_networks else []
    print(f"wrote {', '.join(written[:-1])} and {written[-1]} to {options.output_dir}")
    return results


if __name__ == "__main__":
    main()
