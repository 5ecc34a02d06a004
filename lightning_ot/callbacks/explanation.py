"""``ExplanationCallback``: saliency maps, counterfactual transports and XAI metrics, every epoch."""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from functools import partial
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.model_helpers import is_overridden
from torch import Tensor
from torchmetrics import Metric

from lightning_ot._precision import ieee_float32
from lightning_ot.explain import (
    BoundarySearch,
    Explanation,
    caption_lines,
    encode_png,
    explain,
    explanation_mode,
    render_explanation,
    saliency,
)
from lightning_ot.metrics import AverageStability, Deletion, Insertion, MuFidelity, Sparseness

__all__ = ["ExplanationCallback"]

_INPUT_KEYS = ("input", "inputs", "image", "images", "x")
_TARGET_KEYS = ("target", "targets", "label", "labels", "y")


def _split_batch(batch: Any) -> tuple[Tensor, Tensor]:
    if isinstance(batch, list | tuple) and len(batch) >= 2:
        return batch[0], batch[1]
    if isinstance(batch, Mapping):
        inputs = next((batch[key] for key in _INPUT_KEYS if key in batch), None)
        targets = next((batch[key] for key in _TARGET_KEYS if key in batch), None)
        if inputs is not None and targets is not None:
            return inputs, targets
    raise TypeError(
        "ExplanationCallback needs validation batches of the form (inputs, targets, ...) or a dict with "
        f"keys among {_INPUT_KEYS} and {_TARGET_KEYS}; got {type(batch).__name__}"
    )


def _as_validated(trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any) -> Any:
    """The batch as validation steps receive it: through the data module's and the LightningModule's
    batch-transfer hooks (e.g. uint8 images scaled to float in [0, 1] after the transfer)."""
    owners = [owner for owner in (trainer.datamodule, pl_module) if owner is not None]
    for owner in owners:
        batch = owner.on_before_batch_transfer(batch, 0)
    for owner in owners:
        batch = owner.on_after_batch_transfer(batch, 0)
    return batch


def _logging_step(trainer: pl.Trainer) -> int:
    """The step Lightning gives the metrics logged at this point, so that images line up with them."""
    epoch_loop = getattr(trainer.fit_loop, "epoch_loop", None)
    return int(getattr(epoch_loop, "_batches_that_stepped", trainer.global_step))


class ExplanationCallback(pl.Callback):
    """Log saliency maps, counterfactual transports and explanation metrics of a fixed sample set.

    At the end of the first validation epoch it explains, the callback picks ``num_samples``
    validation samples, as balanced across classes as the data allows, as validation steps receive
    them (through the data module's batch-transfer hooks, so never augmented), and keeps them (they
    are saved in checkpoints). At the
    end of every ``every_n_epochs``-th validation epoch (every time under ``trainer.validate()``),
    on global rank 0 only, it explains them with :func:`~lightning_ot.explain.explain` (one forward
    pass and its backward passes serve the saliency and the transports' first step):

    - the saliency map ``grad f_k(x)`` of the predicted class ``k`` (binary: ``grad f``);
    - the transports ``x - t d`` toward the runner-up class (binary: the other class) at
      ``step_sizes`` times each sample's first-order distance to the boundary ``t_b``, and the
      boundary counterfactual (at most ``max_iterations`` Newton steps onto the boundary);
    - the metrics :class:`~lightning_ot.metrics.Deletion`, :class:`~lightning_ot.metrics.Insertion`,
      :class:`~lightning_ot.metrics.MuFidelity`, :class:`~lightning_ot.metrics.AverageStability` and
      :class:`~lightning_ot.metrics.Sparseness` of the saliency maps, with cheaper settings than
      their (Xplique) defaults so that training does not slow down: ``mu_fidelity_samples`` subsets
      and ``stability_samples`` neighbours per sample (on a batch of 10 samples their values are
      noisy: read trends, not digits).

    It renders one grid per epoch (:func:`~lightning_ot.explain.render_explanation`; rows: samples;
    columns: input | saliency | transports | boundary counterfactual | counterfactual minus input;
    each row captioned with true class, prediction -> counterfactual class, margin, certified radius
    and distance to the boundary), and logs it to every attached logger: W&B (``wandb.Image``),
    TensorBoard (``add_image``), and a PNG under ``<log_dir>/explanations/`` for any other logger
    (e.g. CSV) or none. The figures are logged with ``LightningModule.log`` under ``<prefix>/...``
    (medians and quantiles over the explained samples, see
    :meth:`~lightning_ot.explain.Explanation.summary`):

    - ``gradient_norm``: the **median** of ``||grad f_k||`` of the predicted class (binary:
      ``||grad f||``), and ``gradient_norm_p10`` its 10th percentile: how close the network is to
      gradient-norm preservation (1 is ideal), which decides whether saliency and transports mean
      anything;
    - ``pair_gradient_norm``: the median of ``||grad (f_k - f_j)||`` (at most ``sqrt 2``);
    - ``tightness``: the median of the distance to the boundary counterfactual divided by the
      certified radius (>= 1 always; 1 is ideal; ``boundary_search="nearest"`` measures it with the
      nearest boundary point found);
    - ``flip_rate`` (transports at the largest step that changed the class), ``flip_rate@{t}`` the
      same at each step size ``t`` (how straight the transports are: see ``step_sizes``),
      ``boundary_reached`` (boundary counterfactuals that landed on it or flipped);
    - ``deletion``, ``insertion``, ``mu_fidelity``, ``stability`` (the L2 stability: mean L2
      distance between explanations, not the Spearman stability of the reproduction), ``sparseness``
      (with ``compute_metrics``, every ``metrics_every_n_epochs``-th time the callback runs).

    Other ranks return immediately and never wait for rank 0: the callback runs no collective and
    never calls the model's loss (the hKR loss all-reduces under DDP). The certified radius comes from
    the LightningModule's ``certified_radius(logits)`` if it has one, else
    :func:`~lightning_ot.metrics.certified_radius` with Lipschitz constant 1.

    Args:
        num_samples: samples explained (class-balanced).
        every_n_epochs: explain after every n-th validation epoch of ``fit``.
        step_sizes: transports shown, as multiples of each sample's boundary distance.
        clamp: ``(low, high)`` data range to clamp transports to (and to scale images with), e.g.
            ``[0.0, 1.0]``; None: no clamping, each row scaled to its own range.
        compute_metrics: whether to compute and log the XAI metrics.
        metrics_every_n_epochs: compute the XAI metrics every n-th time the callback explains (the
            grid and the gradient, transport and certificate figures are logged every time).
        mu_fidelity_samples: random subsets per sample for MuFidelity.
        stability_samples: neighbours per sample for AverageStability.
        max_iterations: Newton steps of the boundary counterfactual at most.
        boundary_search: ``"newton"`` (where Newton steps along the gradient land) or ``"nearest"``
            (the nearest boundary point found from there: a lower, truer ``tightness``, 10-20x the
            boundary search's cost); see :func:`~lightning_ot.explain.explain`.
        panel_size: approximate size in pixels of each panel of the grid (48: 8x8 digits at 6x; the
            image is encoded every epoch, its cost grows with its area).
        colormap: kornia colormap of the heatmaps (a diverging one: 0 is its middle).
        prefix: prefix of the logged names.
        scan_limit: validation samples scanned at most to find the class-balanced set.
        seed: seed of the metrics' random subsets and noise (same draws every epoch).

    Example:
        >>> from lightning.pytorch import Trainer
        >>> trainer = Trainer(callbacks=[ExplanationCallback(num_samples=10, every_n_epochs=2)], logger=False)
    """

    def __init__(
        self,
        num_samples: int = 10,
        every_n_epochs: int = 1,
        step_sizes: Sequence[float] = (0.5, 1.0, 2.0),
        clamp: Sequence[float] | None = None,
        compute_metrics: bool = True,
        metrics_every_n_epochs: int = 1,
        mu_fidelity_samples: int = 32,
        stability_samples: int = 4,
        max_iterations: int = 5,
        boundary_search: BoundarySearch = "newton",
        panel_size: int = 48,
        colormap: str = "seismic",
        prefix: str = "explain",
        scan_limit: int = 4096,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if num_samples < 1:
            raise ValueError(f"`num_samples` must be >= 1, got {num_samples}")
        if every_n_epochs < 1:
            raise ValueError(f"`every_n_epochs` must be >= 1, got {every_n_epochs}")
        if len(step_sizes) == 0 or any(step < 0 for step in step_sizes):
            raise ValueError(f"`step_sizes` must be a non-empty list of numbers >= 0, got {list(step_sizes)}")
        if clamp is not None and not (len(clamp) == 2 and clamp[0] < clamp[1]):
            raise ValueError(f"`clamp` must be [low, high] with low < high, got {clamp}")
        if metrics_every_n_epochs < 1:
            raise ValueError(f"`metrics_every_n_epochs` must be >= 1, got {metrics_every_n_epochs}")
        if max_iterations < 1:
            raise ValueError(f"`max_iterations` must be >= 1, got {max_iterations}")
        if boundary_search not in ("newton", "nearest"):
            raise ValueError(f"`boundary_search` must be 'newton' or 'nearest', got {boundary_search!r}")
        if mu_fidelity_samples < 2:
            raise ValueError(f"`mu_fidelity_samples` must be >= 2, got {mu_fidelity_samples}")
        if stability_samples < 1:
            raise ValueError(f"`stability_samples` must be >= 1, got {stability_samples}")
        self.num_samples = num_samples
        self.every_n_epochs = every_n_epochs
        self.step_sizes = [float(step) for step in step_sizes]
        self.clamp = None if clamp is None else (float(clamp[0]), float(clamp[1]))
        self.compute_metrics = compute_metrics
        self.metrics_every_n_epochs = metrics_every_n_epochs
        self.max_iterations = max_iterations
        self.boundary_search = boundary_search
        self.mu_fidelity_samples = mu_fidelity_samples
        self.stability_samples = stability_samples
        self.panel_size = panel_size
        self.colormap = colormap
        self.prefix = prefix
        self.scan_limit = scan_limit
        self.seed = seed
        self.inputs: Tensor | None = None
        self.labels: Tensor | None = None
        self.last_run_seconds: float | None = None
        self.last_metrics: dict[str, float] = {}
        self.last_image_paths: list[Path] = []
        self.last_explanation: Explanation | None = None
        self._runs = 0
        self._warned_not_images = False
        self._metrics_model: Any = None
        self._metrics_settings: tuple[int, int, int] | None = None
        self._metrics_by_name: dict[str, Metric] = {}

    # ----------------------------------------------------------------------------------------------
    # Sample selection
    # ----------------------------------------------------------------------------------------------

    def _validation_loader(self, trainer: pl.Trainer) -> Any:
        datamodule = trainer.datamodule
        if datamodule is not None and is_overridden("val_dataloader", datamodule):
            return datamodule.val_dataloader()
        loaders = trainer.val_dataloaders
        if isinstance(loaders, list | tuple):
            return loaders[0] if loaders else None
        return loaders

    def select_samples(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> bool:
        """Pick the class-balanced sample set from the validation data; False if there is none yet."""
        loader = self._validation_loader(trainer)
        if loader is None:
            return False
        num_classes = getattr(pl_module, "num_classes", None)
        per_class = (
            math.ceil(self.num_samples / num_classes) if isinstance(num_classes, int) else self.num_samples
        )
        by_class: dict[int, list[Tensor]] = defaultdict(list)
        scanned = 0
        with torch.inference_mode(False):
            for batch in loader:
                inputs, labels = _split_batch(_as_validated(trainer, pl_module, batch))
                for input, label in zip(inputs, labels.reshape(-1), strict=True):
                    if len(by_class[int(label)]) < per_class:
                        by_class[int(label)].append(input.detach().cpu().clone())
                scanned += inputs.shape[0]
                full = isinstance(num_classes, int) and len(by_class) >= num_classes
                if (
                    full and all(len(v) >= per_class for v in by_class.values())
                ) or scanned >= self.scan_limit:
                    break
        chosen: list[tuple[Tensor, int]] = []
        for round_index in range(per_class):
            for label in sorted(by_class):
                if round_index < len(by_class[label]) and len(chosen) < self.num_samples:
                    chosen.append((by_class[label][round_index], label))
        if not chosen:
            return False
        self.inputs = torch.stack([input for input, _ in chosen])
        self.labels = torch.tensor([label for _, label in chosen])
        return True

    # ----------------------------------------------------------------------------------------------
    # Explaining
    # ----------------------------------------------------------------------------------------------

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        fitting = trainer.state.fn == TrainerFn.FITTING
        if fitting and (trainer.current_epoch + 1) % self.every_n_epochs != 0:
            return
        if not trainer.is_global_zero:
            return
        if self.inputs is None and not self.select_samples(trainer, pl_module):
            rank_zero_warn("ExplanationCallback found no validation samples to explain; skipping.")
            return
        start = time.perf_counter()
        stage = "fit" if fitting else str(trainer.state.fn.value)
        with torch.inference_mode(False), torch.enable_grad():
            results = self.explain(pl_module)
        metrics = results["metrics"]
        pl_module.log_dict(
            {f"{self.prefix}/{name}": value for name, value in metrics.items()}, rank_zero_only=True
        )
        self.last_metrics = metrics
        self.last_explanation = results["explanation"]
        self.last_image_paths = []
        if results["grid"] is not None:
            self._log_grid(trainer, results["grid"], results["captions"], stage)
        self.last_run_seconds = time.perf_counter() - start

    def explain(self, pl_module: pl.LightningModule) -> dict[str, Any]:
        """Explanation, grid and figures of the sample set (under ``enable_grad``, not inference mode).

        Returns:
            ``{"explanation": Explanation, "grid": (H, W, 3) uint8 array or None, "captions": [str],
            "metrics": {name: float}}``.
        """
        if self.inputs is None or self.labels is None:
            raise RuntimeError("no samples selected: call `select_samples` first")
        model = pl_module
        inputs = self.inputs.to(pl_module.device).clone()
        radius_fn = getattr(pl_module, "certified_radius", None)
        with_metrics = self.compute_metrics and self._runs % self.metrics_every_n_epochs == 0
        self._runs += 1
        # its captions give certified radii: computed as the module certifies (no TF32)
        precision = ieee_float32() if getattr(pl_module, "certify_in_float32", True) else nullcontext()
        with explanation_mode(model, inputs), precision:
            explanation = explain(
                model,
                inputs,
                radius_fn if callable(radius_fn) else 1.0,
                step_sizes=self.step_sizes,
                clamp=self.clamp,
                max_iterations=self.max_iterations,
                boundary_search=self.boundary_search,
            )
            metrics = explanation.summary()
            if with_metrics:
                metrics.update(self._metrics(model, explanation))
        explanation = explanation.to("cpu")
        captions = caption_lines(explanation, self.labels)
        grid = None
        if inputs.ndim == 4:
            grid = render_explanation(
                explanation,
                captions,
                value_range=self.clamp,
                panel_size=self.panel_size,
                colormap=self.colormap,
            )
        elif not self._warned_not_images:
            rank_zero_warn("ExplanationCallback renders grids of (B, C, H, W) images only; logging metrics.")
            self._warned_not_images = True
        return {"explanation": explanation, "grid": grid, "captions": captions, "metrics": metrics}

    def _metrics(self, model: Any, explanation: Explanation) -> dict[str, float]:
        inputs, explanations = explanation.inputs, explanation.saliency
        # The explained class: the prediction (binary: f itself, None), so that no metric recomputes it.
        target = None if explanation.logits.shape[1] == 1 else explanation.prediction
        metrics = self._metric_set(model, inputs.device)
        for metric in metrics.values():
            metric.reset()
        metrics["mu_fidelity"].reseed()  # the same random subsets and noise every epoch
        metrics["stability"].reseed()
        metrics["deletion"].update(inputs, explanations, target)
        metrics["insertion"].update(inputs, explanations, target)
        metrics["mu_fidelity"].update(inputs, explanations, target)
        metrics["stability"].update(inputs, target, explanations=explanations)
        metrics["sparseness"].update(explanations)
        return {name: float(metric.compute()) for name, metric in metrics.items()}

    def _metric_set(self, model: Any, device: torch.device) -> dict[str, Metric]:
        """The XAI metrics of ``model`` at the current settings, built once per ``fit`` or
        ``validate`` (about 0.3 ms each) and kept on ``device``."""
        settings = (self.seed, self.mu_fidelity_samples, self.stability_samples)
        if self._metrics_model is not model or self._metrics_settings != settings:
            options = {"sync_on_compute": False}  # rank 0 alone: a sync would wait for the other ranks
            self._metrics_by_name = {
                "deletion": Deletion(model, **options),
                "insertion": Insertion(model, **options),
                "mu_fidelity": MuFidelity(
                    model, num_samples=self.mu_fidelity_samples, seed=self.seed, **options
                ),
                "stability": AverageStability(
                    partial(saliency, model), num_samples=self.stability_samples, seed=self.seed, **options
                ),
                "sparseness": Sparseness(**options),
            }
            self._metrics_model, self._metrics_settings = model, settings
        for name, metric in self._metrics_by_name.items():
            if metric.device != device:
                self._metrics_by_name[name] = metric.to(device)
        return self._metrics_by_name

    # ----------------------------------------------------------------------------------------------
    # Logging
    # ----------------------------------------------------------------------------------------------

    def _log_grid(self, trainer: pl.Trainer, grid: np.ndarray, captions: list[str], stage: str) -> None:
        key = f"{self.prefix}/grid"
        step = _logging_step(trainer)
        caption = f"epoch {trainer.current_epoch}, step {step}: " + "; ".join(
            c.replace("\n", ", ") for c in captions
        )
        # The PNG is encoded once (unfiltered rows, the fastest zlib level: see `encode_png`) and handed to
        # W&B as a file: its own encoding of an array takes about seven times as long.
        png_dirs: list[Path] = []
        wandb_loggers = []
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                # Beside the run's synced files, not among them (W&B copies the image into its media).
                png_dirs.append(Path(logger.experiment.dir).parent)
                wandb_loggers.append((logger, len(png_dirs) - 1))
            elif isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image(key, grid, global_step=step, dataformats="HWC")
                logger.experiment.add_text(f"{key}/captions", caption, global_step=step)
            else:
                png_dirs.append(Path(logger.log_dir or trainer.default_root_dir))
        if not trainer.loggers:
            png_dirs.append(Path(trainer.default_root_dir))
        if not png_dirs:
            return
        name = f"{stage}-epoch={trainer.current_epoch:03d}-step={step:06d}.png"
        png = encode_png(grid)
        written: list[Path] = []
        for directory in png_dirs:
            path = directory / "explanations" / name
            if path in written:
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(png)
            path.with_suffix(".txt").write_text("\n".join(c.replace("\n", ", ") for c in captions) + "\n")
            written.append(path)
        for logger, index in wandb_loggers:
            logger.log_image(
                key, [str(png_dirs[index] / "explanations" / name)], step=step, caption=[caption]
            )
        self.last_image_paths = written

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # The metrics hold the model and the settings of this run: the next run builds its own.
        self._metrics_model, self._metrics_settings, self._metrics_by_name = None, None, {}

    def state_dict(self) -> dict[str, Any]:
        return {"inputs": self.inputs, "labels": self.labels}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.inputs = state_dict.get("inputs")
        self.labels = state_dict.get("labels")
