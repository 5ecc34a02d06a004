"""``OTClassifier``: any 1-Lipschitz backbone trained with the hKR loss family, as a LightningModule."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

from lightning_ot._precision import ieee_float32
from lightning_ot.losses import HKRLoss, SoftHKRLoss, straightness_penalty
from lightning_ot.metrics import CertifiedRobustAccuracy, certified_radius, predicted_labels
from lightning_ot.metrics.certification import OutputLipschitz
from lightning_ot.nn import input_lipschitz_factor, retract_weights_

__all__ = ["OTClassifier"]

_PLAIN_TYPES = (str, int, float, bool, type(None))


def _is_plain_data(value: Any) -> bool:
    """Whether ``value`` is made of str/int/float/bool/None, lists and dicts only (safe to checkpoint)."""
    if isinstance(value, _PLAIN_TYPES):
        return True
    if isinstance(value, list | tuple):
        return all(_is_plain_data(item) for item in value)
    if isinstance(value, Mapping):
        return all(isinstance(key, str) and _is_plain_data(item) for key, item in value.items())
    return False


class OTClassifier(pl.LightningModule):
    """Train a 1-Lipschitz ``backbone`` as an optimal-transport classifier with the hKR loss.

    Every prediction comes with a certified L2 robustness radius (see
    :func:`~lightning_ot.metrics.certified_radius`), and the input gradient of the trained network is
    the transport direction between the classes (see :mod:`lightning_ot.explain`).

    Args:
        backbone: any ``nn.Module`` mapping a batch of inputs to (B, 1) logits (binary hKR) or (B, C)
            logits. It must be ``lipschitz``-Lipschitz in the L2 norm.
        num_classes: number of classes in the data (2 for binary; then the backbone may output 1 or 2
            values).
        loss: a loss module with ``forward(logits, target)``; if it has ``terms(logits, target)``
            (every loss in :mod:`lightning_ot.losses` does), its KR and hinge parts are logged too.
            Default: :class:`~lightning_ot.losses.HKRLoss` for 2 classes,
            :class:`~lightning_ot.losses.SoftHKRLoss` otherwise.
        optimizer: a callable building the optimizer from the parameters (LightningCLI fills it from
            ``--optimizer``); default Adam with learning rate ``1e-3``.
        lr_scheduler: optional callable building a scheduler from the optimizer.
        lipschitz: the backbone's Lipschitz constant, used for certificates. Default: 1 times the
            ``lipschitz_factor`` of any input normalization layer inside the backbone.
        output_lipschitz: ``"joint"`` if the whole output vector is ``lipschitz``-Lipschitz (true for
            this project's backbones), ``"per_output"`` if only each output is.
        certified_eps: radii at which certified robust accuracy is logged.
        compile_backbone: compile the backbone with ``torch.compile`` (in place, so parameter names and
            checkpoints are unchanged): ``True``, or a dict of ``torch.compile`` keyword arguments
            (``mode``, ``backend``, ``dynamic``, ``fullgraph``). Only the backbone is compiled: the
            loss, metrics and logging stay eager. Compiled training forwards orthonormalize every
            orthogonal weight with Björck's iteration at every step, even with ``retraction_steps``
            (only eager forwards use retracted matrices as they are): with retraction, training
            eagerly is the faster path (``benchmarks/compiled_training.py``); a warning says so.
        audit_lipschitz: at the start of fit, measure the backbone's Lipschitz constant empirically
            (gradient ascent on the first training batch, see :func:`~lightning_ot.nn.lipschitz_audit`)
            and refuse to train, with a ``ValueError``, a backbone that exceeds ``lipschitz``.
        lipschitz_tolerance: relative slack of that check: refuse when the measured constant exceeds
            ``lipschitz * (1 + lipschitz_tolerance)``.
        retraction_steps: after every optimizer step, apply this many Björck steps to the raw
            matrices of the backbone's orthogonal layers (:func:`~lightning_ot.nn.retract_weights_`):
            the backbone's orthonormalized (eval) function does not change, its raw matrices stay
            near orthonormal, and the next training forward uses them as they are (singular values
            in [0, 1]), with the gradient projected on the tangent space: no Björck step forward or
            backward (``NormPreservingConvNet``'s training step: 400 ms without, 60 ms with). ``0``
            (default) never retracts.
        straightness_weight: weight of :func:`~lightning_ot.losses.straightness_penalty` added to the
            training loss (logged as ``train/straightness``): how much less than predicted the
            margin falls from each training input to its first-order boundary point. It straightens
            the gradient lines, so that the first-order transports cross the boundary where the
            certificate says. It costs one input gradient and one forward and backward pass more
            per step. ``0`` (default) leaves it out.
        straightness_step: the move of that penalty, as a multiple of the first-order boundary
            distance (1 = the boundary).
        straightness_start_epoch: the first training epoch (counted from 0) with that penalty, or,
            as a float in [0, 1), that fraction of ``max_epochs`` (as Lightning's
            ``StochasticWeightAveraging(swa_epoch_start=...)``); the epochs before it train without the
            penalty, at the plain step's cost. On ``mnist5k_straight``, starting it halfway through the
            120 epochs gave the network of the penalty from the first epoch (accuracy, certified
            accuracy, flips at 1.1x) in about three quarters of the time (``docs/reproduction.md``,
            "The straightness penalty"). ``0`` (default): from the start.
        certify_in_float32: run the backbone in IEEE float32 in validation, test and predict, whose
            logits give the certified radii and the certified accuracy: outside autocast under
            mixed precision, and without the TF32 that PyTorch uses for float32 convolutions on
            GPUs by default (11 significant bits). A bf16 forward keeps 8 significant bits of every
            layer's output: on the trained ``mnist5k_fast`` network and its 1,000 held-out digits,
            its radii were off by up to 0.011 (1.2 % of the median radius) and 391 of them were
            larger than the exact ones, which a certificate must never be; float32's were within
            1e-6 (against the same weights in float64, the comparison of the ``precision`` section
            of ``benchmarks/gpu_checks.py``). ``False`` certifies from
            the training precision (faster, approximate). Training forwards are unaffected.

    Under mixed precision (``Trainer(precision="bf16-mixed")``) the logits are cast to float32 before
    the loss, the certificates and the metrics; training runs the backbone in low precision, and
    with ``certify_in_float32`` (default) validation, test and predict run it in float32.

    Subclass and override :meth:`compute_loss` or :meth:`certified_radius` to change the loss or the
    certificate without touching the training loop.

    Example:
        >>> from lightning_ot.models import LipschitzMLP
        >>> model = OTClassifier(LipschitzMLP(64, 10, hidden_features=(32,)), num_classes=10)
        >>> model(torch.rand(4, 1, 8, 8)).shape
        torch.Size([4, 10])
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        loss: nn.Module | None = None,
        optimizer: OptimizerCallable = torch.optim.Adam,
        lr_scheduler: LRSchedulerCallable | None = None,
        lipschitz: float | None = None,
        output_lipschitz: OutputLipschitz = "joint",
        certified_eps: Sequence[float] = (0.1, 0.25, 0.5),
        compile_backbone: bool | dict[str, Any] = False,
        audit_lipschitz: bool = True,
        lipschitz_tolerance: float = 0.05,
        retraction_steps: int = 0,
        straightness_weight: float = 0.0,
        straightness_step: float = 1.0,
        straightness_start_epoch: int | float = 0,
        certify_in_float32: bool = True,
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"`num_classes` must be >= 2 (2 for a binary task), got {num_classes}")
        if lipschitz is not None and (lipschitz <= 0 or not math.isfinite(lipschitz)):
            raise ValueError(f"`lipschitz` must be a positive finite number, got {lipschitz}")
        # Keep only hyper-parameters that are plain data: modules given as objects are not pickled into
        # checkpoints (under LightningCLI they are their `class_path`/`init_args` config, which is kept).
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*is an instance of `nn.Module`.*")
            self.save_hyperparameters()
        not_plain = [key for key, value in self.hparams.items() if not _is_plain_data(value)]
        self.remove_ignored_hparams(not_plain)
        for key in not_plain:  # loggers log `hparams_initial`: a CSV logger cannot write modules to YAML
            self._hparams_initial.pop(key, None)

        self.backbone = backbone
        if compile_backbone:
            self.backbone.compile(**(compile_backbone if isinstance(compile_backbone, dict) else {}))
        self.num_classes = num_classes
        self.loss = loss if loss is not None else (HKRLoss() if num_classes == 2 else SoftHKRLoss())
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.lipschitz = float(lipschitz) if lipschitz is not None else input_lipschitz_factor(backbone)
        self.output_lipschitz = output_lipschitz
        self.certified_eps = [float(eps) for eps in certified_eps]

        self.train_accuracy = MulticlassAccuracy(num_classes, average="micro")
        self.val_accuracy = MulticlassAccuracy(num_classes, average="micro")
        self.val_certified = CertifiedRobustAccuracy(self.certified_eps, self.lipschitz, output_lipschitz)
        self.test_accuracy = MulticlassAccuracy(num_classes, average="micro")
        self.test_certified = CertifiedRobustAccuracy(self.certified_eps, self.lipschitz, output_lipschitz)
        self._output_width_checked = False
        if lipschitz_tolerance < 0:
            raise ValueError(f"`lipschitz_tolerance` must be >= 0, got {lipschitz_tolerance}")
        self.audit_lipschitz = audit_lipschitz
        self.lipschitz_tolerance = float(lipschitz_tolerance)
        self._lipschitz_audit_pending = False
        if retraction_steps < 0:
            raise ValueError(f"`retraction_steps` must be >= 0 (0 never retracts), got {retraction_steps}")
        self.retraction_steps = int(retraction_steps)
        if compile_backbone and self.retraction_steps:
            rank_zero_warn(
                "`compile_backbone` with `retraction_steps`: compiled training forwards orthonormalize "
                "every orthogonal weight with Björck's iteration at every step; only eager forwards "
                "use the retracted matrices as they are (on one CPU thread, mnist5k_fast's training "
                "step took 33-37x longer compiled, 3.4-3.7x with torch.set_flush_denormal(True)). Train "
                "eagerly to keep retraction's speed-up; see benchmarks/compiled_training.py."
            )
        if not (straightness_weight >= 0 and math.isfinite(straightness_weight)):
            raise ValueError(f"`straightness_weight` must be a finite number >= 0, got {straightness_weight}")
        if not straightness_step > 0:
            raise ValueError(f"`straightness_step` must be > 0, got {straightness_step}")
        start = straightness_start_epoch
        if isinstance(start, bool) or not (
            (isinstance(start, int) and start >= 0) or (isinstance(start, float) and 0.0 <= start < 1.0)
        ):
            raise ValueError(
                "`straightness_start_epoch` must be an epoch (an integer >= 0) or a fraction of "
                f"`max_epochs` (a float in [0, 1)), got {start!r}"
            )
        self.straightness_weight = float(straightness_weight)
        self.straightness_step = float(straightness_step)
        self.straightness_start_epoch = straightness_start_epoch
        self.certify_in_float32 = bool(certify_in_float32)
        self._warned_half_certificates = False

    # ----------------------------------------------------------------------------------------------
    # What a subclass overrides
    # ----------------------------------------------------------------------------------------------

    def forward(self, input: Tensor) -> Tensor:
        return self.backbone(input)

    def _float32_logits(self, input: Tensor, certifying: bool = False) -> Tensor:
        """The backbone's logits, checked, in float32 when it ran in half precision (autocast); when
        ``certifying`` (with ``certify_in_float32``) the backbone runs in IEEE float32: outside
        autocast, and without TF32 (see :func:`~lightning_ot._precision.ieee_float32`)."""
        half = (torch.float16, torch.bfloat16)
        if certifying and self.certify_in_float32:
            if torch.is_autocast_enabled(input.device.type) and input.dtype in half:
                input = input.float()  # mixed precision: the weights are float32
            elif input.dtype in half and not self._warned_half_certificates:
                rank_zero_warn(
                    f"the backbone certifies from {input.dtype} inputs (a half-precision network, e.g. "
                    "`precision='bf16-true'`): its certified radii are approximate, off by about 1 % in "
                    "bf16. Train with `precision='bf16-mixed'` for certificates from a float32 forward."
                )
                self._warned_half_certificates = True
            with torch.autocast(input.device.type, enabled=False), ieee_float32():
                logits = self(input)
        else:
            logits = self(input)
        self._check_output(logits)
        return logits.float() if logits.dtype in half else logits

    def compute_loss(self, logits: Tensor, target: Tensor) -> dict[str, Tensor]:
        """The loss to minimize under ``"loss"``, plus any components to log (``"kr"``, ``"hinge"``).

        Args:
            logits: (B, 1) or (B, C) backbone outputs.
            target: (B,) labels.
        """
        terms = getattr(self.loss, "terms", None)
        if terms is None:
            return {"loss": self.loss(logits, target)}
        return terms(logits, target)._asdict()

    def certified_radius(self, logits: Tensor) -> Tensor:
        """(B,) certified L2 radius of each prediction."""
        return certified_radius(logits, self.lipschitz, self.output_lipschitz)

    def predict_labels(self, logits: Tensor) -> Tensor:
        """(B,) predicted class indices."""
        return predicted_labels(logits)

    # ----------------------------------------------------------------------------------------------
    # Checks
    # ----------------------------------------------------------------------------------------------

    def _check_output(self, logits: Any) -> None:
        allowed = (1, 2) if self.num_classes == 2 else (self.num_classes,)
        if not isinstance(logits, Tensor):
            raise TypeError(
                f"the backbone returns a {type(logits).__name__}, not a tensor: OTClassifier needs (B, "
                f"{' or '.join(map(str, allowed))}) logits; wrap the backbone so that its forward returns "
                "the logits alone"
            )
        if self._output_width_checked:
            return
        if logits.ndim != 2 or logits.shape[1] not in allowed:
            raise ValueError(
                f"the backbone returns logits of shape {tuple(logits.shape)} but num_classes="
                f"{self.num_classes} needs (B, {' or '.join(map(str, allowed))}): change the backbone's "
                "number of outputs or `num_classes`"
            )
        self._output_width_checked = True

    def _binary_as_index(self, target: Tensor) -> Tensor:
        target = target.reshape(-1)
        return (target > 0).long() if self.num_classes == 2 else target.long()

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        data_classes = getattr(datamodule, "num_classes", None)
        if isinstance(data_classes, int) and data_classes != self.num_classes:
            raise ValueError(
                f"the data module has {data_classes} classes but the model was built with num_classes="
                f"{self.num_classes}; set `--model.num_classes {data_classes}` and a backbone with "
                f"{1 if data_classes == 2 else data_classes} output(s)"
            )

    def on_fit_start(self) -> None:
        # The audit needs a batch-shaped input: it runs on the first training batch (no extra loading).
        self._lipschitz_audit_pending = self.audit_lipschitz
        if self.straightness_weight > 0:
            first, max_epochs = self._straightness_first_epoch(), self.trainer.max_epochs
            if max_epochs is not None and max_epochs >= 0 and first >= max_epochs:
                rank_zero_warn(
                    f"`straightness_start_epoch`={self.straightness_start_epoch} is at or after the last "
                    f"epoch (`max_epochs`={max_epochs}): the straightness penalty will never be applied"
                )

    def _straightness_first_epoch(self) -> int:
        """``straightness_start_epoch`` as an epoch (a fraction of ``max_epochs`` resolved)."""
        start = self.straightness_start_epoch
        if isinstance(start, int):
            return start
        max_epochs = self.trainer.max_epochs if self._trainer is not None else None
        if max_epochs is None or max_epochs < 0:
            raise ValueError(
                f"`straightness_start_epoch`={start} is a fraction of `max_epochs`, but the trainer has no "
                f"`max_epochs` ({max_epochs}): give the start as an epoch (an integer) instead"
            )
        return int(start * max_epochs)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        if self._lipschitz_audit_pending:
            self._lipschitz_audit_pending = False
            self.check_lipschitz(batch[0] if isinstance(batch, list | tuple) else batch)

    def check_lipschitz(self, input: Tensor) -> float:
        """Measure the backbone's Lipschitz constant on ``input`` (empirical part of the audit) and
        raise a ``ValueError`` if it exceeds ``lipschitz * (1 + lipschitz_tolerance)``.

        The measurement is a lower estimate (largest ratio found by gradient ascent from the given
        inputs), so it can only catch a backbone that is *not* as Lipschitz as declared. Under DDP the
        largest value over the ranks decides, so that every rank takes the same decision.

        Returns:
            the measured constant.
        """
        from lightning_ot.nn import lipschitz_audit

        starts = input[:16].detach()
        _check_finite_input(starts, "training")
        # Before the audit, which assumes (B, K) logits; in eval mode, so no running statistic moves.
        modes = {module: module.training for module in self.backbone.modules()}
        try:
            with torch.no_grad():
                self._check_output(self.backbone.eval()(starts))
        finally:
            for module, training in modes.items():
                module.train(training)
        with ieee_float32():  # TF32's rounding would be measured as a Lipschitz constant above 1
            report = lipschitz_audit(
                self.backbone, tuple(starts.shape[1:]), starts, layers=False, ascent_steps=20
            )
        measured = float(report.empirical or 0.0)
        if self._trainer is not None:
            reduced = self.trainer.strategy.reduce(
                torch.tensor(measured, device=self.device, dtype=torch.float32), reduce_op="max"
            )
            measured = float(reduced)
        limit = self.lipschitz * (1 + self.lipschitz_tolerance)
        if measured > limit:
            raise ValueError(
                f"the backbone is not {self.lipschitz:g}-Lipschitz: the audit measured a Lipschitz constant "
                f"of at least {measured:.4g} (declared `lipschitz`={self.lipschitz:g}, tolerance "
                f"{self.lipschitz_tolerance:g}). Use 1-Lipschitz layers (lightning_ot.nn), declare the right "
                "`lipschitz`, or pass `audit_lipschitz=False` for an unconstrained baseline"
            )
        return measured

    # ----------------------------------------------------------------------------------------------
    # Lightning hooks
    # ----------------------------------------------------------------------------------------------

    def _shared_step(self, batch: Any, stage: str) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        input, target = batch[0], batch[1]
        straighten = (
            stage == "train"
            and self.straightness_weight > 0
            and self.current_epoch >= self._straightness_first_epoch()
        )
        if straighten:
            input = input.detach().requires_grad_(True)  # the penalty's input gradient reuses this forward
        logits = self._float32_logits(input, certifying=stage != "train")
        try:
            terms = self.compute_loss(logits, target)
        except ValueError:
            _check_finite_input(input, stage)  # non-finite logits from non-finite inputs: say so
            raise
        if straighten:
            penalty = straightness_penalty(
                self.backbone, input, target, step=self.straightness_step, logits=logits
            )
            terms = {
                **terms,
                "loss": terms["loss"] + self.straightness_weight * penalty,
                "straightness": penalty,
            }
        batch_size = input.shape[0]
        for name, value in terms.items():
            self.log(
                f"{stage}/{name}",
                value,
                prog_bar=(name == "loss"),
                on_step=(stage == "train"),
                on_epoch=True,
                sync_dist=(stage != "train"),
                batch_size=batch_size,
            )
        return logits, self._binary_as_index(target), terms

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        logits, target, terms = self._shared_step(batch, "train")
        self.train_accuracy(self.predict_labels(logits.detach()), target)
        self.log("train/acc", self.train_accuracy, on_step=False, on_epoch=True)
        return terms["loss"]

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        logits, target, _ = self._shared_step(batch, "val")
        self.val_accuracy(self.predict_labels(logits), target)
        self.val_certified.update(logits, target, self.certified_radius(logits))
        self.log("val/acc", self.val_accuracy, prog_bar=True)

    def on_validation_epoch_end(self) -> None:
        self._log_certified(self.val_certified, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        logits, target, _ = self._shared_step(batch, "test")
        self.test_accuracy(self.predict_labels(logits), target)
        self.test_certified.update(logits, target, self.certified_radius(logits))
        self.log("test/acc", self.test_accuracy)

    def on_test_epoch_end(self) -> None:
        self._log_certified(self.test_certified, "test")

    def _log_certified(self, metric: CertifiedRobustAccuracy, stage: str) -> None:
        values = metric.compute().reshape(-1)  # 0-d for a single eps
        for eps, value in zip(metric.eps, values, strict=True):
            # Already synced by the metric; sync_dist only tells Lightning so (same value on every rank).
            self.log(f"{stage}/certified_acc@{eps:g}", value, sync_dist=True)
        metric.reset()

    def predict_step(self, batch: Any, batch_idx: int) -> dict[str, Tensor]:
        input = batch[0] if isinstance(batch, list | tuple) else batch
        _check_finite_input(input, "predict")
        logits = self._float32_logits(input, certifying=True)
        return {
            "logits": logits,
            "prediction": self.predict_labels(logits),
            "certified_radius": self.certified_radius(logits),
        }

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        _resume_cut_epochs_where_they_stopped(self._trainer, checkpoint)

    def optimizer_step(
        self,
        epoch: int,
        batch_idx: int,
        optimizer: Any,
        optimizer_closure: Callable[[], Any] | None = None,
    ) -> None:
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        if self.retraction_steps:
            retract_weights_(self.backbone, self.retraction_steps)

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(self.parameters())
        if self.lr_scheduler_factory is None:
            return optimizer
        scheduler = self.lr_scheduler_factory(optimizer)
        config: dict[str, Any] = {"scheduler": scheduler}
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            config["monitor"] = "val/loss"
        return {"optimizer": optimizer, "lr_scheduler": config}


def _check_finite_input(input: Tensor, stage: str) -> None:
    if isinstance(input, Tensor) and input.is_floating_point() and not bool(torch.isfinite(input).all()):
        count = int((~torch.isfinite(input)).sum())
        stage = {"train": "training", "val": "validation"}.get(stage, stage)
        raise ValueError(
            f"the {stage} batch's input (shape {tuple(input.shape)}) contains {count} non-finite value(s) "
            "(NaN or inf): the data is broken (a corrupt file, a division by zero in a transform?), "
            "not the model"
        )


def _resume_cut_epochs_where_they_stopped(trainer: pl.Trainer | None, checkpoint: dict[str, Any]) -> None:
    """Make a checkpoint saved after an epoch was cut short resume inside that epoch.

    A fit stopped before the end of its epoch (``max_steps``, ``trainer.should_stop``, a time limit) still
    runs the epoch-end hooks, so the checkpoints written then record the epoch as finished and Lightning
    2.6 would resume at the next epoch, silently dropping the rest of this one. Rewinding the loop
    counters of the last batch and of the epoch end makes them read as the checkpoint that
    ``ModelCheckpoint(every_n_train_steps=...)`` writes after that batch: the resumed fit finishes the
    epoch from the position its resumable loader saved (:mod:`lightning_ot.data.sampling`).
    """
    if trainer is None or trainer.state.fn != "fit":
        return
    loop = checkpoint.get("loops", {}).get("fit_loop")
    total_batches = trainer.num_training_batches
    if loop is None or not math.isfinite(total_batches):
        return
    epochs, batches = loop["epoch_progress"], loop["epoch_loop.batch_progress"]
    epoch_ended = epochs["current"]["processed"] == epochs["current"]["started"]
    cut = 0 < batches["current"]["ready"] < total_batches
    if not (epoch_ended and cut and batches["current"]["completed"] == batches["current"]["ready"]):
        return
    for part in ("total", "current"):
        if epochs[part]["completed"] == epochs[part]["processed"]:  # saved after the fit had ended
            epochs[part]["completed"] -= 1
        epochs[part]["processed"] -= 1
        batches[part]["completed"] -= 1
    loop["epoch_loop.state_dict"]["_batches_that_stepped"] -= 1
