"""The ``classes`` argument shared by the digit data modules: checked once, relabelled in order.

The IDX and mnist5k modules' own tests check that they refuse bad ``classes`` with the same message."""

from __future__ import annotations

import numpy as np
import pytest

from lightning_ot.data import DigitsDataModule
from lightning_ot.data._classes import check_classes, relabel, select_classes


def test_classes_are_checked_and_relabelled_in_the_order_given() -> None:
    assert check_classes(None) is None
    assert check_classes((8, np.int64(0))) == [8, 0]
    np.testing.assert_array_equal(relabel(np.array([0, 8, 3, 8]), [8, 0]), [1, 0, -1, 0])
    images, labels = select_classes(np.array([10, 11, 12, 13]), np.array([0, 8, 3, 8]), [8, 0])
    np.testing.assert_array_equal(images, [10, 11, 13])  # the 3 is dropped
    np.testing.assert_array_equal(labels, [1, 0, 0])


@pytest.mark.parametrize("classes", [[3], [3, 3], [3, 3, 5], [3, 10], [-1, 2]])
def test_bad_classes_are_refused(classes: list[int]) -> None:
    with pytest.raises(ValueError, match=r"`classes` must list at least two distinct labels in 0\.\.9"):
        DigitsDataModule(classes=classes)
