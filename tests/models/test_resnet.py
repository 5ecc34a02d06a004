"""LipschitzResNet's gradient-norm-preserving variant and the partitioned L2-norm pooling of its head."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_ot.data import SyntheticImageDataModule
from lightning_ot.losses import SoftHKRLoss
from lightning_ot.models import LipschitzResNet
from lightning_ot.models.resnet import PartitionedL2NormPool2d
from lightning_ot.nn import (
    GlobalL2NormPool2d,
    OrthogonalConv2d,
    gradient_norms,
    lipschitz_audit,
    vanilla_export,
)


def _small(norm_preserving: bool, num_outputs: int = 100) -> LipschitzResNet:
    # 64 channels in the last stage and 100 classes: the norm-preserving head pools 2 parts per channel
    return LipschitzResNet(
        3, num_outputs, width_multiplier=0.125, stage_blocks=(1, 1, 1, 1), norm_preserving=norm_preserving
    )


def test_norm_preserving_variant_keeps_gradient_norms_through_training() -> None:
    """||grad f_k|| = 1 at init and after real training steps; the residual network loses it."""
    torch.manual_seed(0)
    data = SyntheticImageDataModule((3, 64, 64), num_classes=100, num_samples=64, batch_size=16)
    data.setup("fit")
    images = data.val_dataset.tensors[0][:8]
    model = _small(norm_preserving=True)
    assert isinstance(model.layers[-2], PartitionedL2NormPool2d)
    assert model.layers[-2].parts == 2
    assert gradient_norms(model.eval(), images).min() >= 0.999
    model.train()
    loss_fn = SoftHKRLoss(margin=0.05, hinge_weight=500.0, temperature=200.0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _epoch in range(2):
        for batch, labels in data.train_dataloader():
            optimizer.zero_grad()
            loss = loss_fn(model(batch), labels)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
    assert losses[-1] < losses[0]
    norms = gradient_norms(model.eval(), images)
    assert norms.min() >= 0.999
    assert norms.max() <= 1 + 1e-4
    report = lipschitz_audit(model, (3, 64, 64), num_starts=2, ascent_steps=3)
    assert report.upper_bound <= 1 + 1e-4
    residual = _small(norm_preserving=False).eval()
    assert gradient_norms(residual, images).median() < 0.5


def test_norm_preserving_variant_structure_and_export() -> None:
    model = _small(norm_preserving=True)
    assert model.widths[0] == 8  # capped at the stem's 48 channels, never widened
    assert not any(type(module).__name__ == "LipschitzResidual" for module in model.modules())
    convs = [m for m in model.modules() if isinstance(m, OrthogonalConv2d) and m.kernel_size == (3, 3)]
    assert convs
    assert all(conv.padding_mode == "circular" for conv in convs)
    wide_stem = LipschitzResNet(3, 10, stage_blocks=(1, 1, 1, 1), norm_preserving=True)
    assert wide_stem.widths == [48, 128, 256, 512]
    model.eval()
    x = torch.rand(2, 3, 64, 64)
    torch.testing.assert_close(vanilla_export(model)(x), model(x), atol=1e-5, rtol=0)


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="at most 4x"):
        LipschitzResNet(3, 10, stage_blocks=(1, 1), stage_widths=(16, 128), norm_preserving=True)
    with pytest.raises(ValueError, match="padding_mode"):
        LipschitzResNet(3, 10, padding_mode="reflect")
    with pytest.raises(ValueError, match="num_outputs"):
        LipschitzResNet(3, 0)


def test_partitioned_pooling_is_a_co_isometry() -> None:
    """Disjoint groups: the Jacobian has orthonormal rows (gradients keep their norm)."""
    torch.manual_seed(0)
    pool = PartitionedL2NormPool2d(3)
    x = torch.randn(1, 2, 3, 3, dtype=torch.float64)
    jacobian = torch.autograd.functional.jacobian(pool, x).reshape(6, 18)
    torch.testing.assert_close(jacobian @ jacobian.T, torch.eye(6, dtype=torch.float64))
    # 9 positions in 3 contiguous groups of 3: channel 0's second value is the norm of positions 3-5
    torch.testing.assert_close(pool(x)[0, 1], x[0, 0].flatten()[3:6].norm(), atol=1e-9, rtol=0)
    torch.testing.assert_close(PartitionedL2NormPool2d(1)(x), GlobalL2NormPool2d()(x))
    assert lipschitz_audit(nn.Sequential(pool), (2, 3, 3), empirical=False).upper_bound == 1.0


def test_partitioned_pooling_refuses_bad_arguments() -> None:
    with pytest.raises(ValueError, match="parts"):
        PartitionedL2NormPool2d(0)
    with pytest.raises(ValueError, match="5 parts"):
        PartitionedL2NormPool2d(5)(torch.rand(1, 1, 2, 2))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        PartitionedL2NormPool2d(2)(torch.rand(2, 4))
