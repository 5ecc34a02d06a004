"""The loss-convention page's table of published settings agrees with the conversion functions."""

from __future__ import annotations

import re

import pytest

from lightning_ot.losses import from_deel_lip, from_deel_torchlip, to_deel_lip, to_deel_torchlip
from tests.conftest import REPO_ROOT

PAGE = REPO_ROOT / "docs" / "loss-conventions.md"


def _settings_rows() -> list[list[str]]:
    text = PAGE.read_text()
    table = text.split("## The published settings in each convention", 1)[1]
    rows = [line for line in table.splitlines() if line.startswith("|")][2:]
    return [[cell.strip() for cell in row.strip("|").split("|")] for row in rows]


def test_table_has_the_papers_settings() -> None:
    names = [row[0] for row in _settings_rows()]
    assert len(names) == 4
    assert any("FashionMNIST" in name for name in names)
    assert any("ImageNet" in name for name in names)


@pytest.mark.parametrize("row", _settings_rows(), ids=lambda row: row[0])
def test_each_row_converts_both_ways(row: list[str]) -> None:
    margin, hinge_weight = float(row[1]), float(row[2])
    lip_alpha, lip_min_margin = (float(value) for value in re.split(r",\s*", row[3]))
    torchlip_alpha, torchlip_min_margin = (float(value) for value in re.split(r",\s*", row[4]))

    assert to_deel_lip(margin, hinge_weight) == pytest.approx(
        {"alpha": lip_alpha, "min_margin": lip_min_margin}
    )
    converted = to_deel_torchlip(margin, hinge_weight)
    assert converted["alpha"] == pytest.approx(torchlip_alpha, abs=5e-5)
    assert converted["min_margin"] == pytest.approx(torchlip_min_margin)

    back = from_deel_lip(lip_alpha, lip_min_margin)
    assert (back.margin, back.hinge_weight) == pytest.approx((margin, hinge_weight))
    back = from_deel_torchlip(torchlip_alpha, torchlip_min_margin)
    assert back.margin == pytest.approx(margin)
    assert back.hinge_weight == pytest.approx(hinge_weight, rel=5e-3)  # the table rounds alpha to 4 digits
