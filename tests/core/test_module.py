"""OTClassifier: real training on digits, checkpoints, subclassing and bad input."""

from __future__ import annotations

import warnings
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from torch import nn

from lightning_ot import OTClassifier
from lightning_ot.callbacks import ExplanationCallback
from lightning_ot.data import DigitsDataModule
from lightning_ot.losses import HKRLoss, SoftHKRLoss
from lightning_ot.models import LipschitzMLP
from lightning_ot.nn import Normalize, OrthogonalLinear


def _trainer(tmp_path: Path, **kwargs) -> pl.Trainer:
    defaults = {
        "default_root_dir": tmp_path,
        "accelerator": "cpu",
        "devices": 1,
        "logger": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "max_epochs": 6,
    }
    defaults.update(kwargs)
    return pl.Trainer(**defaults)


@pytest.fixture(scope="module")
def trained(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[OTClassifier, DigitsDataModule, pl.Trainer, Path]:
    tmp_path = tmp_path_factory.mktemp("trained")
    pl.seed_everything(0)
    data = DigitsDataModule(batch_size=64)
    model = OTClassifier(
        LipschitzMLP(64, 10, hidden_features=(128, 128)),
        num_classes=10,
        loss=SoftHKRLoss(margin=0.5, hinge_weight=10.0, temperature=10.0),
        optimizer=lambda params: torch.optim.Adam(params, lr=3e-3),
    )
    trainer = _trainer(tmp_path)
    trainer.fit(model, datamodule=data)
    return model, data, trainer, tmp_path


def test_training_on_digits_beats_chance_by_far(trained) -> None:
    model, _, trainer, _ = trained
    metrics = trainer.callback_metrics
    assert float(metrics["val/acc"]) > 0.85  # chance is 0.10
    certified = [float(metrics[f"val/certified_acc@{eps:g}"]) for eps in model.certified_eps]
    assert certified == sorted(certified, reverse=True)  # larger radii certify fewer samples
    assert 0.0 < certified[0] <= float(metrics["val/acc"])
    assert float(metrics["train/kr_epoch"]) > 0.0  # the classes were pushed apart


def test_certificates_hold_against_random_attacks(trained) -> None:
    model, data, _, _ = trained
    images, _ = next(iter(data.val_dataloader()))
    model.eval()
    with torch.no_grad():
        logits = model(images)
        radius = model.certified_radius(logits)
        prediction = model.predict_labels(logits)
        generator = torch.Generator().manual_seed(0)
        for _ in range(20):
            noise = torch.nn.functional.normalize(
                torch.randn(images.shape, generator=generator).flatten(1), dim=1
            )
            perturbed = images + 0.99 * radius[:, None, None, None] * noise.view_as(images)
            assert bool((model.predict_labels(model(perturbed)) == prediction).all())


def test_bf16_mixed_certifies_from_a_float32_forward(trained, tmp_path: Path) -> None:
    model, data, _, _ = trained
    loader = data.val_dataloader()
    images = torch.cat([batch[0] for batch in loader])
    model.eval()
    with torch.no_grad():
        exact = model.certified_radius(model(images))

    def predicted_radii(certify_in_float32: bool) -> torch.Tensor:
        model.certify_in_float32 = certify_in_float32
        try:
            trainer = _trainer(tmp_path, precision="bf16-mixed")
            outputs = trainer.predict(model, dataloaders=loader)
        finally:
            model.certify_in_float32 = True
        return torch.cat([output["certified_radius"] for output in outputs])

    torch.testing.assert_close(predicted_radii(True), exact, rtol=0, atol=1e-6)
    # The bf16 forward's radii are off, some of them above the exact ones: what the option prevents.
    approximate = predicted_radii(False)
    assert float((approximate - exact).abs().max()) > 1e-4
    assert bool((approximate > exact + 1e-5).any())
    # Validation certifies the same way: its certified accuracy is the float32 one.
    validated = {}
    for precision in ("32-true", "bf16-mixed"):
        (metrics,) = _trainer(tmp_path, precision=precision).validate(
            model, dataloaders=loader, verbose=False
        )
        validated[precision] = metrics
    for eps in model.certified_eps:
        name = f"val/certified_acc@{eps:g}"
        assert validated["bf16-mixed"][name] == validated["32-true"][name]


class _PrecisionRecorder(nn.Module):
    """A backbone that records, at each forward, the arithmetic it runs under."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.seen: set[tuple[bool, bool, str, bool]] = set()

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        autocast = torch.is_autocast_enabled(input.device.type)
        self.seen.add(
            (self.training, torch.backends.cudnn.allow_tf32, torch.get_float32_matmul_precision(), autocast)
        )
        return self.backbone(input)


def test_certifying_forwards_leave_autocast_and_tf32_and_restore_the_settings(tmp_path: Path) -> None:
    recorder = _PrecisionRecorder(LipschitzMLP(64, 10, hidden_features=(16,)))
    model = OTClassifier(recorder, num_classes=10, audit_lipschitz=False)
    previous = torch.backends.cudnn.allow_tf32, torch.get_float32_matmul_precision()
    torch.backends.cudnn.allow_tf32 = True
    torch.set_float32_matmul_precision("medium")  # what Lightning suggests on GPUs with tensor cores
    explainer = ExplanationCallback(num_samples=2, compute_metrics=False)
    try:
        trainer = _trainer(
            tmp_path,
            precision="bf16-mixed",
            max_epochs=1,
            limit_train_batches=2,
            limit_val_batches=1,
            callbacks=[explainer],
        )
        trainer.fit(model, datamodule=DigitsDataModule(batch_size=32))
        assert explainer.last_explanation is not None
        # training as configured; validation and the explanations (their captions give radii) in
        # IEEE float32
        assert recorder.seen == {(True, True, "medium", True), (False, False, "highest", False)}
        assert (torch.backends.cudnn.allow_tf32, torch.get_float32_matmul_precision()) == (True, "medium")
    finally:
        torch.backends.cudnn.allow_tf32 = previous[0]
        torch.set_float32_matmul_precision(previous[1])


def test_checkpoint_reloads_with_identical_predictions_and_loss_state(trained) -> None:
    model, data, trainer, tmp_path = trained
    path = tmp_path / "final.ckpt"
    trainer.save_checkpoint(path)
    checkpoint = torch.load(path, weights_only=True)  # nothing but plain data and tensors
    assert "loss.mean_abs_logit" in checkpoint["state_dict"]

    restored = OTClassifier.load_from_checkpoint(
        path,
        weights_only=True,
        backbone=LipschitzMLP(64, 10, hidden_features=(128, 128)),
        loss=SoftHKRLoss(margin=0.5),
    )
    images, _ = next(iter(data.val_dataloader()))
    model.eval()
    restored.eval()
    with torch.no_grad():
        torch.testing.assert_close(restored(images), model(images))
    torch.testing.assert_close(restored.loss.mean_abs_logit, model.loss.mean_abs_logit)
    assert model.loss.mean_abs_logit.item() != pytest.approx(0.5)  # the running mean did move


def test_resuming_fit_continues_where_it_stopped(trained, tmp_path: Path) -> None:
    _, data, trainer, trained_path = trained
    path = trained_path / "resume.ckpt"
    trainer.save_checkpoint(path)
    steps_before = trainer.global_step
    model = OTClassifier(
        LipschitzMLP(64, 10, hidden_features=(128, 128)), num_classes=10, loss=SoftHKRLoss(margin=0.5)
    )
    resumed = _trainer(tmp_path, max_epochs=7)
    resumed.fit(model, datamodule=data, ckpt_path=path, weights_only=True)
    assert resumed.current_epoch == 7
    assert resumed.global_step == steps_before + steps_before // 6


def test_binary_task_with_one_output() -> None:
    pl.seed_everything(0)
    data = DigitsDataModule(classes=[0, 8], batch_size=32)
    model = OTClassifier(LipschitzMLP(64, 1, hidden_features=(64,)), num_classes=2)
    assert isinstance(model.loss, HKRLoss)
    trainer = pl.Trainer(
        max_epochs=4,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
    )
    trainer.fit(model, datamodule=data)
    assert float(trainer.callback_metrics["val/acc"]) > 0.95


def test_lipschitz_constant_includes_input_normalization() -> None:
    backbone = LipschitzMLP(64, 10, hidden_features=(16,), normalize_mean=[0.5], normalize_std=[0.25])
    model = OTClassifier(backbone, num_classes=10)
    assert model.lipschitz == pytest.approx(4.0)
    assert model.val_certified.lipschitz == pytest.approx(4.0)
    assert OTClassifier(nn.Sequential(Normalize([0.0], [0.5]), nn.Flatten()), num_classes=64).lipschitz == 2.0


class MarginOnlyClassifier(OTClassifier):
    """A subclass that changes the loss by overriding one method."""

    def compute_loss(self, logits: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        terms = super().compute_loss(logits, target)
        terms["doubled"] = 2 * terms["loss"]
        terms["loss"] = terms["hinge"]
        return terms


def test_subclass_overrides_the_loss_without_copying_the_step(tmp_path: Path) -> None:
    model = MarginOnlyClassifier(LipschitzMLP(64, 10, hidden_features=(16,)), num_classes=10)
    trainer = _trainer(tmp_path, max_epochs=1, limit_train_batches=3, limit_val_batches=1)
    trainer.fit(model, datamodule=DigitsDataModule())
    assert {"train/doubled_epoch", "train/hinge_epoch", "val/doubled"} <= set(trainer.callback_metrics)
    torch.testing.assert_close(
        trainer.callback_metrics["train/loss_epoch"], trainer.callback_metrics["train/hinge_epoch"]
    )


class ZeroRadiusClassifier(OTClassifier):
    """A subclass with its own (trivially conservative) certificate."""

    def certified_radius(self, logits: torch.Tensor) -> torch.Tensor:
        return 0.0 * super().certified_radius(logits)


def test_overridden_certificate_is_the_one_logged(tmp_path: Path) -> None:
    model = ZeroRadiusClassifier(LipschitzMLP(64, 10, hidden_features=(16,)), num_classes=10)
    trainer = _trainer(tmp_path, max_epochs=1, limit_train_batches=3, limit_val_batches=1)
    trainer.fit(model, datamodule=DigitsDataModule())
    assert float(trainer.callback_metrics["val/acc"]) > 0.0
    assert all(
        float(trainer.callback_metrics[f"val/certified_acc@{eps:g}"]) == 0.0 for eps in model.certified_eps
    )


def test_backbone_output_width_that_does_not_fit_is_a_clear_error(tmp_path: Path) -> None:
    model = OTClassifier(LipschitzMLP(64, 3, hidden_features=(16,)), num_classes=10)
    with pytest.raises(ValueError, match=r"logits of shape \(\d+, 3\) but num_classes=10"):
        _trainer(tmp_path, fast_dev_run=True).fit(model, datamodule=DigitsDataModule())


def test_data_with_other_class_count_is_a_clear_error(tmp_path: Path) -> None:
    model = OTClassifier(LipschitzMLP(64, 10, hidden_features=(16,)), num_classes=10)
    with pytest.raises(ValueError, match="data module has 2 classes"):
        _trainer(tmp_path, fast_dev_run=True).fit(model, datamodule=DigitsDataModule(classes=[3, 5]))


def test_bad_constructor_arguments() -> None:
    with pytest.raises(ValueError, match="num_classes"):
        OTClassifier(nn.Linear(2, 1), num_classes=1)
    with pytest.raises(ValueError, match="lipschitz"):
        OTClassifier(nn.Linear(2, 1), num_classes=2, lipschitz=-1.0)
    with pytest.raises(ValueError, match="retraction_steps"):
        OTClassifier(nn.Linear(2, 1), num_classes=2, retraction_steps=-1)
    with pytest.raises(ValueError, match="straightness_weight"):
        OTClassifier(nn.Linear(2, 1), num_classes=2, straightness_weight=-1.0)
    with pytest.raises(ValueError, match="straightness_step"):
        OTClassifier(nn.Linear(2, 1), num_classes=2, straightness_step=0.0)
    for start in (-1, 1.0, 1.5, -0.5, True, "2"):
        with pytest.raises(ValueError, match="straightness_start_epoch"):
            OTClassifier(nn.Linear(2, 1), num_classes=2, straightness_start_epoch=start)


def test_compiling_a_retracted_backbone_warns_that_training_forwards_orthonormalize() -> None:
    """Retraction's speed-up is eager only: ``compile_backbone`` with ``retraction_steps`` says so."""
    with pytest.warns(UserWarning, match="compiled training forwards orthonormalize"):
        OTClassifier(
            LipschitzMLP(4, 2, hidden_features=(4,)), num_classes=2, compile_backbone=True, retraction_steps=1
        )
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*compiled training forwards orthonormalize")
        OTClassifier(LipschitzMLP(4, 2, hidden_features=(4,)), num_classes=2, compile_backbone=True)
        OTClassifier(LipschitzMLP(4, 2, hidden_features=(4,)), num_classes=2, retraction_steps=1)


def test_the_straightness_penalty_is_added_to_the_training_loss_and_logged(tmp_path: Path) -> None:
    """``straightness_weight``: the logged training loss is the hKR loss plus the weighted penalty."""
    logged = {}
    for weight in (0.0, 5.0):
        pl.seed_everything(0)
        model = OTClassifier(
            LipschitzMLP(64, 10, hidden_features=(32, 32)),
            num_classes=10,
            straightness_weight=weight,
            retraction_steps=1,
        )
        trainer = _trainer(tmp_path / str(weight), max_epochs=1, limit_train_batches=3, limit_val_batches=1)
        trainer.fit(model, datamodule=DigitsDataModule(batch_size=64))
        logged[weight] = {key: float(value) for key, value in trainer.callback_metrics.items()}
    assert "train/straightness_epoch" not in logged[0.0]
    with_penalty = logged[5.0]
    assert with_penalty["train/straightness_epoch"] > 0
    hkr = with_penalty["train/kr_epoch"], with_penalty["train/hinge_epoch"]
    expected = model.loss.hinge_weight * hkr[1] - hkr[0] + 5.0 * with_penalty["train/straightness_epoch"]
    assert with_penalty["train/loss_epoch"] == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize("start", [2, 0.5])
def test_the_straightness_penalty_starts_at_its_start_epoch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, start: float
) -> None:
    """``straightness_start_epoch`` (an epoch, or a fraction of ``max_epochs``): the epochs before it
    train without the penalty, the later ones with it."""
    import lightning_ot.module as module

    epochs_penalized: list[int] = []
    penalty = module.straightness_penalty

    def spy(*args: object, **kwargs: object) -> torch.Tensor:
        epochs_penalized.append(model.current_epoch)
        return penalty(*args, **kwargs)

    monkeypatch.setattr(module, "straightness_penalty", spy)
    pl.seed_everything(0)
    model = OTClassifier(
        LipschitzMLP(64, 10, hidden_features=(32,)),
        num_classes=10,
        straightness_weight=5.0,
        straightness_start_epoch=start,
        retraction_steps=1,
    )
    trainer = _trainer(tmp_path, max_epochs=4, limit_train_batches=2, limit_val_batches=1)
    trainer.fit(model, datamodule=DigitsDataModule(batch_size=64))
    assert epochs_penalized == [2, 2, 3, 3]  # two batches an epoch, from epoch 2 on
    metrics = trainer.callback_metrics
    hinge, kr = float(metrics["train/hinge_epoch"]), float(metrics["train/kr_epoch"])
    expected = model.loss.hinge_weight * hinge - kr + 5.0 * float(metrics["train/straightness_epoch"])
    assert float(metrics["train/loss_epoch"]) == pytest.approx(expected, rel=1e-4)


def test_a_straightness_start_the_fit_never_reaches_warns_and_a_fraction_needs_max_epochs(
    tmp_path: Path,
) -> None:
    def model(start: float) -> OTClassifier:
        backbone = LipschitzMLP(64, 10, hidden_features=(16,))
        return OTClassifier(backbone, num_classes=10, straightness_weight=5.0, straightness_start_epoch=start)

    data = DigitsDataModule(batch_size=64)
    with pytest.warns(UserWarning, match="will never be applied"):
        _trainer(tmp_path, max_epochs=2, limit_train_batches=1, limit_val_batches=1).fit(model(2), data)
    no_epoch_limit = _trainer(tmp_path, max_epochs=-1, max_steps=2, limit_val_batches=1)
    with pytest.raises(ValueError, match="fraction of `max_epochs`"):
        no_epoch_limit.fit(model(0.5), data)


def test_retraction_keeps_the_raw_weights_orthonormal_during_fit(tmp_path: Path) -> None:
    """``retraction_steps=1``: the raw matrices stay near orthonormal; without it Adam spreads them."""
    outcome = {}
    for steps in (0, 1):
        pl.seed_everything(0)
        model = OTClassifier(
            LipschitzMLP(64, 10, hidden_features=(64, 64)),
            num_classes=10,
            optimizer=lambda params: torch.optim.Adam(params, lr=5e-3),
            retraction_steps=steps,
        )
        trainer = _trainer(tmp_path / str(steps), max_epochs=2)
        trainer.fit(model, datamodule=DigitsDataModule(batch_size=64))
        # every layer of this MLP has orthonormal rows (out <= in): W W^T = I
        raw = [layer.weight_orig.detach() for layer in model.modules() if isinstance(layer, OrthogonalLinear)]
        deviation = max(float((w @ w.T - torch.eye(len(w))).norm()) for w in raw)
        outcome[steps] = deviation, float(trainer.callback_metrics["val/acc"])
    assert outcome[1][0] < 0.05 < outcome[0][0], outcome
    assert outcome[1][1] > 0.8, outcome  # it trains as well: 10 classes, chance is 0.1


def test_non_finite_inputs_stop_training_with_a_clear_error(tmp_path: Path) -> None:
    class NaNData(DigitsDataModule):
        def setup(self, stage: str | None = None) -> None:
            super().setup(stage)
            self.train_dataset.tensors[0][:] = float("nan")

    model = OTClassifier(LipschitzMLP(64, 10, hidden_features=(16,)), num_classes=10)
    with pytest.raises(ValueError, match="non-finite"):
        _trainer(tmp_path, fast_dev_run=True).fit(model, datamodule=NaNData())


def test_a_single_certified_radius_is_logged() -> None:
    """One ``certified_eps`` makes the metric return a 0-d tensor: it must log, not fail to iterate."""
    model = OTClassifier(LipschitzMLP(64, 10, hidden_features=(16,)), num_classes=10, certified_eps=[0.1])
    trainer = pl.Trainer(
        fast_dev_run=True, logger=False, enable_progress_bar=False, enable_model_summary=False
    )
    trainer.fit(model, DigitsDataModule())
    assert "val/certified_acc@0.1" in trainer.callback_metrics


class _Malformed(nn.Module):
    """A 1-Lipschitz MLP whose forward returns its logits in a malformed container or shape."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.mlp = LipschitzMLP(64, 10, hidden_features=(16,))

    def forward(self, input: torch.Tensor):
        logits = self.mlp(input)
        if self.kind == "tuple":
            return logits, logits.detach()
        if self.kind == "flat":
            return logits[:, 0]
        return {"logits": logits}


@pytest.mark.parametrize("audit", [True, False])
@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("tuple", r"the backbone returns a tuple, not a tensor"),
        ("dict", r"the backbone returns a dict, not a tensor"),
        ("flat", r"the backbone returns logits of shape \(\d+,\) but num_classes=10 needs \(B, 10\)"),
    ],
)
def test_malformed_backbone_output_is_named_before_the_audit(
    tmp_path: Path, kind: str, message: str, audit: bool
) -> None:
    model = OTClassifier(_Malformed(kind), num_classes=10, audit_lipschitz=audit)
    with pytest.raises((TypeError, ValueError), match=message):
        _trainer(tmp_path, fast_dev_run=True).fit(model, datamodule=DigitsDataModule())


@pytest.mark.parametrize("audit", [True, False])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_images_are_reported_as_the_input_batch(tmp_path: Path, value: float, audit: bool) -> None:
    class BrokenData(DigitsDataModule):
        def setup(self, stage: str | None = None) -> None:
            super().setup(stage)
            self.train_dataset.tensors[0][:, :, 2, 3] = value

    model = OTClassifier(LipschitzMLP(64, 10, hidden_features=(16,)), num_classes=10, audit_lipschitz=audit)
    with pytest.raises(
        ValueError, match=r"the training batch's input \(shape \(\d+, 1, 8, 8\)\) contains \d+ non-finite"
    ):
        _trainer(tmp_path, fast_dev_run=True).fit(model, datamodule=BrokenData())


def test_a_half_precision_network_still_validates_and_warns_that_its_certificates_are_approximate(
    tmp_path: Path,
) -> None:
    model = OTClassifier(LipschitzMLP(64, 10, hidden_features=(16,)), num_classes=10)
    trainer = _trainer(tmp_path, precision="bf16-true", limit_val_batches=1)
    with pytest.warns(UserWarning, match="its certified radii are approximate"):
        (metrics,) = trainer.validate(model, datamodule=DigitsDataModule(batch_size=32), verbose=False)
    assert 0.0 <= metrics["val/certified_acc@0.1"] <= 1.0


def test_ieee_float32_restores_the_settings_even_after_an_error() -> None:
    from lightning_ot._precision import ieee_float32

    def settings() -> tuple[bool, str]:
        return torch.backends.cudnn.allow_tf32, torch.get_float32_matmul_precision()

    def fail_inside() -> None:
        with ieee_float32():
            assert settings() == (False, "highest")
            raise RuntimeError("inside")

    previous = settings()
    try:
        for setting in ((True, "high"), (False, "medium"), (True, "highest"), (False, "highest")):
            torch.backends.cudnn.allow_tf32 = setting[0]
            torch.set_float32_matmul_precision(setting[1])
            with pytest.raises(RuntimeError, match="inside"):
                fail_inside()
            assert settings() == setting
    finally:
        torch.backends.cudnn.allow_tf32 = previous[0]
        torch.set_float32_matmul_precision(previous[1])
