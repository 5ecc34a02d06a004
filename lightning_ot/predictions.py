"""``CertifiedPredictionWriter``: the predictions of ``trainer.predict`` with their certified radii, as CSV."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

import lightning.pytorch as pl
from lightning.pytorch.callbacks import BasePredictionWriter
from torch import Tensor

__all__ = ["PREDICTION_COLUMNS", "CertifiedPredictionWriter", "runner_up_and_margin"]

PREDICTION_COLUMNS = ("index", "prediction", "runner_up", "margin", "certified_radius")


def runner_up_and_margin(logits: Tensor) -> tuple[Tensor, Tensor]:
    """(B,) second most likely class and (B,) logit margin that the certificate divides by ``L``.

    Binary logits (B,) or (B, 1): the runner-up is the other class and the margin ``|f(x)|``;
    (B, C) logits: the class of the second largest logit and ``f_top1 - f_top2``.

    Example:
        >>> import torch
        >>> runner_up_and_margin(torch.tensor([[3.0, 1.0, 0.5]]))
        (tensor([1]), tensor([2.]))
        >>> runner_up_and_margin(torch.tensor([[-0.25]]))
        (tensor([1]), tensor([0.2500]))
    """
    logits = logits.detach().float()
    if logits.ndim == 1 or (logits.ndim == 2 and logits.shape[1] == 1):
        scores = logits.reshape(-1)
        return (scores <= 0).long(), scores.abs()
    if logits.ndim != 2:
        raise ValueError(f"`logits` must have shape (B,), (B, 1) or (B, C), got {tuple(logits.shape)}")
    top2 = logits.topk(2, dim=1)
    return top2.indices[:, 1], top2.values[:, 0] - top2.values[:, 1]


class CertifiedPredictionWriter(BasePredictionWriter):
    """Write one CSV row per predicted input: ``index, prediction, runner_up, margin, certified_radius``.

    ``index`` is the input's index in the prediction dataset; ``certified_radius`` is
    :meth:`~lightning_ot.OTClassifier.certified_radius` (no L2 perturbation smaller than it can change
    the prediction). The ``predict`` subcommand of ``python -m lightning_ot`` adds this writer when
    no other prediction writer is configured. Under DDP each process writes its own file
    (``predictions.rank1.csv`` ...).

    Args:
        output_path: the CSV file (default ``predictions.csv`` in the trainer's ``default_root_dir``,
            the current folder unless set). Its folder is created.

    Example:
        >>> from lightning_ot import OTClassifier
        >>> from lightning_ot.models import LipschitzMLP
        >>> import tempfile, torch, torch.utils.data as data
        >>> path = Path(tempfile.mkdtemp()) / "out.csv"
        >>> trainer = pl.Trainer(
        ...     callbacks=[CertifiedPredictionWriter(path)],
        ...     logger=False,
        ...     enable_progress_bar=False,
        ...     enable_model_summary=False,
        ... )
        >>> model = OTClassifier(LipschitzMLP(4, 3, hidden_features=(8,)), num_classes=3)
        >>> loader = data.DataLoader(data.TensorDataset(torch.rand(5, 4)), batch_size=2)
        >>> _ = trainer.predict(model, loader, return_predictions=False)  # doctest: +ELLIPSIS
        predictions of 5 inputs written to ...out.csv
        >>> path.read_text().splitlines()[0]
        'index,prediction,runner_up,margin,certified_radius'
    """

    def __init__(self, output_path: str | Path | None = None) -> None:
        super().__init__(write_interval="batch")
        self.output_path = Path(output_path) if output_path is not None else None
        self._file: TextIO | None = None
        self._writer: Any = None
        self._rows = 0
        self.written_path: Path | None = None

    def _path(self, trainer: pl.Trainer) -> Path:
        path = self.output_path or Path(trainer.default_root_dir) / "predictions.csv"
        if trainer.world_size > 1 and trainer.global_rank > 0:
            path = path.with_name(f"{path.stem}.rank{trainer.global_rank}{path.suffix}")
        return path

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.written_path = self._path(trainer)
        self.written_path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.written_path.open("w", newline="")
        self._writer = csv.writer(self._file)
        self._writer.writerow(PREDICTION_COLUMNS)
        self._rows = 0

    def write_on_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        prediction: Any,
        batch_indices: Sequence[int] | None,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        if not isinstance(prediction, dict) or not {"logits", "prediction", "certified_radius"} <= set(
            prediction
        ):
            raise TypeError(
                "CertifiedPredictionWriter needs `predict_step` to return a dict with 'logits', 'prediction' "
                f"and 'certified_radius' (OTClassifier's does), got {type(prediction).__name__}"
            )
        runner_up, margin = runner_up_and_margin(prediction["logits"])
        labels = prediction["prediction"].reshape(-1).tolist()
        radii = prediction["certified_radius"].reshape(-1).tolist()
        if batch_indices is None:  # the loader's sampler is not tracked: count the rows instead
            batch_indices = range(self._rows, self._rows + len(labels))
        assert self._writer is not None
        for index, label, other, gap, radius in zip(
            batch_indices, labels, runner_up.tolist(), margin.tolist(), radii, strict=True
        ):
            self._writer.writerow([int(index), int(label), int(other), f"{gap:.6g}", f"{radius:.6g}"])
        self._rows += len(labels)

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if trainer.is_global_zero:
            print(f"predictions of {self._rows} inputs written to {self.written_path}")

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._file is not None:  # predict failed midway: release the file
            self._file.close()
            self._file = None
