"""Björck's iteration starts from an estimate of the top singular value: one step for an orthonormal
matrix, and still an operator norm <= 1 after any number of steps >= 1."""

from __future__ import annotations

import pytest
import torch

from lightning_ot.nn import bjorck_orthonormalize
from lightning_ot.nn.linear import _MAX_START_RATIO, _bjorck_steps, _BjorckTrace, _starting_scale


def _with_singular_values(values: torch.Tensor, columns: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    rows = len(values)
    left = torch.linalg.qr(torch.randn(rows, rows, generator=generator, dtype=torch.float64)).Q
    right = torch.linalg.qr(torch.randn(columns, rows, generator=generator, dtype=torch.float64)).Q
    return left @ torch.diag(values) @ right.T


SPECTRA = {
    "orthonormal": lambda m: torch.ones(m),
    "one dominant value": lambda m: torch.cat([torch.tensor([10.0]), torch.full((m - 1,), 0.1)]),
    "many at the top, one small": lambda m: torch.cat([torch.ones(m - 1), torch.tensor([1e-3])]),
    "geometric": lambda m: 0.9 ** torch.arange(m, dtype=torch.float64),
    "uniform": lambda m: torch.linspace(0.01, 3.0, m),
}


CASES = [(spectrum, size) for spectrum in SPECTRA for size in (4, 64, 700)]
# 1600 is beyond 2.5^8: two rounds of squarings instead of one
CASES += [("orthonormal", 1600), ("one dominant value", 1600)]


@pytest.mark.parametrize(("spectrum", "size"), CASES)
def test_the_scaled_top_singular_value_lies_in_one_to_sqrt_of_the_ratio(spectrum: str, size: int) -> None:
    values = SPECTRA[spectrum](size).double()
    matrix = _with_singular_values(values, size + 3, seed=size)
    top = float(_starting_scale(matrix @ matrix.mT)) * float(values.max())
    assert 1 - 1e-9 <= top <= _MAX_START_RATIO**0.5 * (1 + 1e-9)


def test_an_orthonormal_matrix_takes_a_single_step() -> None:
    torch.manual_seed(0)
    for size in (16, 512):
        weight = torch.linalg.qr(torch.randn(size, size)).Q
        trace = _BjorckTrace()
        result = _bjorck_steps(weight, 12, 1e-3, trace)
        assert len(trace.steps) == 1  # three with the upper bound m^(1/64) above the norm
        torch.testing.assert_close(result, weight, atol=1e-5, rtol=0)


@pytest.mark.parametrize("iterations", [1, 2, 5])
@pytest.mark.parametrize("spectrum", list(SPECTRA))
def test_the_bound_holds_after_any_number_of_steps(spectrum: str, iterations: int) -> None:
    values = SPECTRA[spectrum](48).double()
    matrix = _with_singular_values(values, 60, seed=iterations)
    result = bjorck_orthonormalize(matrix, iterations, tolerance=None)
    assert torch.linalg.matrix_norm(result, ord=2) <= 1 + 1e-12


def test_a_zero_matrix_stays_zero_with_any_scale() -> None:
    assert torch.equal(_bjorck_steps(torch.zeros(3, 5), 4, 1e-3), torch.zeros(3, 5))
