"""Lightning data modules (no torchvision)."""

from lightning_ot.data.digits import DigitsDataModule

__all__ = ["DigitsDataModule"]
