"""Backbones: shapes, YAML construction, sizes, a short real training run within the bound, the
ImageNet-scale network, the unconstrained twin, and OTClassifier's refusal of a non-Lipschitz backbone."""

from __future__ import annotations

import jsonargparse
import lightning.pytorch as pl
import pytest
import torch
from torch import nn

from lightning_ot import OTClassifier
from lightning_ot.data import DigitsDataModule
from lightning_ot.losses import HKRLoss
from lightning_ot.models import LipschitzConvNet, LipschitzMLP, LipschitzResNet, unconstrained_twin
from lightning_ot.nn import MaxMin, OrthogonalConv2d, lipschitz_audit, vanilla_export


@pytest.mark.parametrize(
    ("in_channels", "image_size", "channels"),
    [(1, 28, (32, 32, 64, 64, 128)), (3, 64, (8, 8, 16, 16, 32, 32))],
)
def test_convnet_shapes(in_channels: int, image_size: int, channels: tuple[int, ...]) -> None:
    model = LipschitzConvNet(in_channels, 7, image_size=image_size, channels=channels)
    assert model(torch.rand(2, in_channels, image_size, image_size)).shape == (2, 7)
    assert sum(isinstance(m, OrthogonalConv2d) for m in model.modules()) == len(channels)


def test_backbones_build_from_yaml() -> None:
    parser = jsonargparse.ArgumentParser()
    parser.add_argument("--backbone", type=nn.Module)
    config = parser.parse_string(
        "backbone:\n  class_path: lightning_ot.models.LipschitzConvNet\n"
        "  init_args: {in_channels: 1, num_outputs: 10, image_size: 28, channels: [8, 8, 16, 16, 16]}\n"
    )
    model = parser.instantiate_classes(config).backbone
    assert isinstance(model, LipschitzConvNet)
    assert model(torch.rand(1, 1, 28, 28)).shape == (1, 10)


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="even"):
        LipschitzConvNet(1, 10, 28, channels=(3, 4))
    with pytest.raises(ValueError, match="stride"):
        OrthogonalConv2d(2, 2, 1, stride=2)
    with pytest.raises(ValueError, match="width_multiplier"):
        LipschitzResNet(width_multiplier=0)


def test_unconstrained_twin_has_plain_layers() -> None:
    model = LipschitzConvNet(1, 10, 28, channels=(8, 8, 16, 16, 16))
    twin = unconstrained_twin(model, activation=nn.GELU)
    kinds = {type(m) for m in twin.modules()}
    assert nn.Conv2d in kinds
    assert nn.GELU in kinds
    assert nn.MaxPool2d in kinds
    assert not any(isinstance(m, OrthogonalConv2d | MaxMin) for m in twin.modules())
    assert twin(torch.rand(2, 1, 28, 28)).shape == (2, 10)


def test_short_training_run_stays_within_the_bound() -> None:
    """Real data (8x8 digits, 0 vs 1), binary hKR, 40 Adam steps: accurate, and still 1-Lipschitz."""
    from sklearn.datasets import load_digits

    torch.manual_seed(0)
    digits = load_digits(n_class=2)
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16
    labels = torch.tensor(digits.target)
    model = LipschitzConvNet(1, 1, image_size=8, channels=(8, 8, 16), hidden_features=16)
    loss_fn = HKRLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _step in range(40):
        index = torch.randint(0, len(images), (64,))
        optimizer.zero_grad()
        loss_fn(model(images[index]), labels[index]).backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        accuracy = ((model(images)[:, 0] > 0).long() == labels).float().mean()
    assert accuracy > 0.95
    report = lipschitz_audit(model, (1, 8, 8), images[:32])
    assert report.upper_bound <= 1 + 1e-4
    assert report.max_operator_norm <= 1 + 1e-4
    assert report.empirical <= 1 + 1e-4
    assert 0.2 < report.gradient_norm_mean <= 1 + 1e-4


def test_imagenet_resnet_sizes() -> None:
    """About 25M weights (50M wide) in the equivalent plain network."""
    standard = LipschitzResNet(3, 1000)
    plain = sum(p.numel() for p in unconstrained_twin(standard).parameters())
    assert 22e6 < plain < 28e6
    wide = sum(
        p.numel() for p in unconstrained_twin(LipschitzResNet(3, 1000, width_multiplier=1.41)).parameters()
    )
    assert 45e6 < wide < 55e6


def test_resnet_trains_a_step_and_exports() -> None:
    torch.manual_seed(0)
    model = LipschitzResNet(3, 10, width_multiplier=0.25, stage_blocks=(1, 1, 1, 1))
    x, y = torch.rand(2, 3, 64, 64), torch.tensor([1, 7])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    model.eval()
    torch.testing.assert_close(vanilla_export(model)(x), model(x), atol=1e-5, rtol=0)
    report = lipschitz_audit(model, (3, 64, 64), num_starts=2, ascent_steps=3)
    assert report.upper_bound <= 1 + 1e-4
    assert report.max_operator_norm <= 1 + 1e-4


def test_ot_classifier_refuses_a_backbone_above_its_declared_constant(tmp_path) -> None:
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    with torch.no_grad():
        backbone[1].weight.mul_(20)
    model = OTClassifier(backbone, num_classes=10)
    trainer = pl.Trainer(
        max_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        default_root_dir=tmp_path,
        num_sanity_val_steps=0,
    )
    with pytest.raises(ValueError, match=r"not 1-Lipschitz.*measured"):
        trainer.fit(model, DigitsDataModule(batch_size=32))


def test_ot_classifier_accepts_a_lipschitz_backbone_and_the_check_is_cheap(tmp_path) -> None:
    import time

    model = OTClassifier(LipschitzMLP(64, 10), num_classes=10)
    batch = torch.rand(64, 1, 8, 8)
    start = time.perf_counter()
    measured = model.check_lipschitz(batch)
    assert time.perf_counter() - start < 1.0
    assert measured <= 1 + 1e-4
    # an unconstrained baseline trains with the audit off
    OTClassifier(unconstrained_twin(LipschitzMLP(64, 10)), num_classes=10, audit_lipschitz=False)
