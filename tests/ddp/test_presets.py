"""Strategy preset, bf16 mixed precision with float32 loss, and backbone compilation."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import pytest
import torch

from lightning_ot import OTClassifier
from lightning_ot.data import SyntheticImageDataModule
from lightning_ot.models import LipschitzMLP
from lightning_ot.strategies import LipschitzDDPStrategy


def test_preset_settings_and_registry() -> None:
    strategy = LipschitzDDPStrategy(bucket_cap_mb=50, timeout_minutes=5)
    settings = strategy._ddp_kwargs
    assert settings["static_graph"] is True
    assert settings["find_unused_parameters"] is False
    assert settings["gradient_as_bucket_view"] is True
    assert settings["bucket_cap_mb"] == 50
    assert settings.get("forward_sync_buffers", settings.get("broadcast_buffers")) is True
    with pytest.raises(ValueError, match="static_graph=True` and `find_unused_parameters=True"):
        LipschitzDDPStrategy(find_unused_parameters=True)
    with pytest.raises(ValueError, match="timeout_minutes"):
        LipschitzDDPStrategy(timeout_minutes=0)
    trainer = pl.Trainer(strategy="lipschitz_ddp", accelerator="cpu", devices=1, logger=False)
    assert isinstance(trainer.strategy, LipschitzDDPStrategy)


class _DtypeSpy(pl.Callback):
    def __init__(self) -> None:
        self.dtypes: list[tuple[torch.dtype, torch.dtype]] = []

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: Any, outputs: Any, batch: Any, index: int
    ) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            raw = pl_module(batch[0])
            cast = pl_module._float32_logits(batch[0])
        self.dtypes.append((raw.dtype, cast.dtype))
        assert outputs["loss"].dtype == torch.float32


def test_bf16_mixed_keeps_loss_and_certificates_in_float32_and_compiled_backbone_trains(tmp_path) -> None:
    torch.manual_seed(0)
    model = OTClassifier(
        LipschitzMLP(48, 4, hidden_features=(16,)), num_classes=4, compile_backbone={"backend": "eager"}
    )
    keys = set(OTClassifier(LipschitzMLP(48, 4, hidden_features=(16,)), num_classes=4).state_dict())
    spy = _DtypeSpy()
    trainer = pl.Trainer(
        accelerator="cpu",
        precision="bf16-mixed",
        max_steps=2,
        limit_val_batches=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        default_root_dir=tmp_path,
        callbacks=[spy],
    )
    trainer.fit(model, SyntheticImageDataModule((3, 4, 4), num_classes=4, num_samples=8, batch_size=4))
    assert trainer.global_step == 2
    assert spy.dtypes == [(torch.bfloat16, torch.float32)] * 2
    assert model.backbone._compiled_call_impl is not None
    assert set(model.state_dict()) == keys  # compiled in place: checkpoints keep their names
    assert trainer.callback_metrics["val/certified_acc@0.1"].dtype == torch.float32


def _operator_norm(apply: Any, adjoint: Any, shape: tuple[int, ...]) -> float:
    vector = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for _ in range(60):
        vector = adjoint(apply(vector))
        vector = vector / vector.norm()
    return float(apply(vector).norm() / vector.norm())


def test_orthogonal_weights_stay_orthogonal_under_bf16_autocast() -> None:
    """Mixed precision must not run the Björck iterations in bfloat16 (they then diverge)."""
    from torch.nn import functional

    from lightning_ot.nn import OrthogonalConv2d, OrthogonalLinear

    torch.manual_seed(0)
    linear, conv = OrthogonalLinear(128, 128), OrthogonalConv2d(16, 16, 3)
    with torch.no_grad():  # far from orthogonal, as during training
        for parameter in [*linear.parameters(), *conv.parameters()]:
            parameter.add_(0.3 * torch.randn_like(parameter))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        matrix, kernel = linear.weight, conv.weight
    assert float(torch.linalg.matrix_norm(matrix.double(), 2)) < 1.0 + 1e-3
    kernel = kernel.double()
    norm = _operator_norm(
        lambda x: functional.conv2d(x, kernel, padding=1),
        lambda y: functional.conv_transpose2d(y, kernel, padding=1),
        (1, 16, 12, 12),
    )
    assert norm < 1.0 + 1e-3
