"""The hKR losses under plain ``torch.distributed`` DDP: 2 ranks x b equal 1 rank x 2b, exactly."""

from __future__ import annotations

import pytest
import torch
import torch.multiprocessing as mp

from tests.ddp import _plain_workers as workers

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    folder = tmp_path_factory.mktemp("plain_ddp")
    mp.spawn(workers.worker, args=(2, str(folder / "store"), str(folder)), nprocs=2, join=True)
    return [torch.load(folder / f"rank{rank}.pt") for rank in range(2)]


@pytest.mark.parametrize("case", workers.CASES)
def test_two_ranks_match_one_rank_with_the_global_batch(ddp_results: list[dict], case: str) -> None:
    reference = workers.train(case)
    for rank in range(2):
        result = ddp_results[rank][case]
        torch.testing.assert_close(
            torch.tensor(result["losses"]), torch.tensor(reference["losses"]), atol=1e-5, rtol=0
        )
        for stage in ("first", "last"):
            for name, value in reference[stage].items():
                torch.testing.assert_close(
                    result[stage][name], value, atol=1e-5, rtol=0, msg=f"{stage} {name}"
                )
        for name, value in reference["buffers"].items():
            torch.testing.assert_close(result["buffers"][name], value, atol=1e-6, rtol=0)
    # The parameters moved: the comparison is not between two untrained copies.
    initial = dict(workers.make_case(case)[0].named_parameters())
    assert max((reference["last"][name] - initial[name]).abs().max() for name in initial) > 1e-3


def test_ranks_hold_identical_parameters_and_buffers(ddp_results: list[dict]) -> None:
    for case in workers.CASES:
        first, second = ddp_results[0][case], ddp_results[1][case]
        for name, value in first["last"].items():
            assert torch.equal(value, second["last"][name]), (case, name)
        for name, value in first["buffers"].items():
            assert torch.equal(value, second["buffers"][name]), (case, name)


def test_local_class_means_would_differ(ddp_results: list[dict]) -> None:
    """The binary case is built so that per-rank KR means differ from global ones: without the
    all-reduce inside the loss the equivalence above would fail."""
    _, loss_fn, inputs, labels = workers.make_case("binary")
    model = workers.make_case("binary")[0]
    with torch.no_grad():
        logits = model(inputs[0])
        global_loss = loss_fn(logits, labels[0])
        local_mean = (loss_fn(logits[0::2], labels[0, 0::2]) + loss_fn(logits[1::2], labels[0, 1::2])) / 2
    assert abs(float(global_loss) - float(local_mean)) > 1e-3
    assert abs(ddp_results[0]["binary"]["losses"][0] - float(global_loss)) < 1e-5


def test_metrics_are_synced_over_ranks(ddp_results: list[dict]) -> None:
    """Certified accuracy and the explanation metrics, each rank updated with half of the samples,
    compute the full-data value on both ranks."""
    reference = workers.metric_values()
    for rank in range(2):
        for name, value in reference.items():
            torch.testing.assert_close(ddp_results[rank]["metrics"][name], value, msg=f"rank {rank} {name}")
    # Half of the samples alone gives other values: the comparison does test the synchronization.
    half = workers.metric_values(rank=0, world_size=2)  # no process group here: local states only
    assert all(not torch.allclose(half[name], reference[name]) for name in reference)
