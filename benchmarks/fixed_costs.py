"""The fixed cost of small operations: the library's paths against the standard ones, in one run.

    python benchmarks/fixed_costs.py             # one thread, a few seconds

Small layers cost their operations' dispatch more than their arithmetic, so three paths of
``lightning_ot.nn`` avoid fixed costs. Each is timed here, interleaved call by call, against the
standard path it replaces, with the median of the per-round ratios:

- ``Function.apply`` (``lightning_ot.nn._function``) against ``torch.autograd.Function.apply``, which
  binds the arguments to the signature of ``forward`` with ``inspect.signature`` at every call: the
  forward of MaxMin and of a retracted 64 x 64 ``OrthogonalLinear`` at batch 128, and a training
  step of the quickstart MLP;
- ``retract_weights_`` (same-shape small matrices retracted together in one batched pass) against
  each layer's own ``retract_``, on the quickstart MLP;
- the projection steps of a BCOP kernel as one Function with a written-out backward
  (``lightning_ot.nn.conv._BCOPKernel``) against the same steps recorded by autograd, for the six
  16-channel 3 x 3 kernels of the ``mnist5k`` network built together, forward and backward;
- ``circular_pad`` against ``F.pad(mode="circular")``, forward and backward, on the padded
  (128, 16, 7, 7) feature maps of that network's second stage;
- ``encode_png`` (``lightning_ot.explain``: unfiltered rows) against Pillow's PNG encoder at the same
  zlib level (1), which chooses a prediction filter for every row, on the explanation grid that
  ``ExplanationCallback`` logs every epoch for the quickstart's 10 digits (48-pixel panels).
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lightning_ot.data import DigitsDataModule
from lightning_ot.explain import caption_lines, encode_png, explain, render_explanation
from lightning_ot.models import LipschitzMLP
from lightning_ot.nn import MaxMin, OrthogonalLinear, circular_pad, retract_weights_
from lightning_ot.nn._function import Function
from lightning_ot.nn.conv import _bcop_kernel, _bcop_kernel_by_steps

_STANDARD_APPLY = classmethod(torch.autograd.Function.apply.__func__)
_LIBRARY_APPLY = Function.__dict__["apply"]


def _with_apply(apply: classmethod, call: Callable[[], object]) -> Callable[[], None]:
    def run() -> None:
        Function.apply = apply
        try:
            call()
        finally:
            Function.apply = _LIBRARY_APPLY

    return run


def interleaved_ratio(candidate: Callable[[], None], baseline: Callable[[], None], rounds: int) -> tuple:
    """Median time of each and the median, 25th and 75th percentiles of the per-round ratios."""
    times: dict[str, list[float]] = {"candidate": [], "baseline": []}
    for _ in range(rounds):
        for name, call in (("candidate", candidate), ("baseline", baseline)):
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    ratios = sorted(c / b for c, b in zip(times["candidate"], times["baseline"], strict=True))
    quartiles = statistics.quantiles(ratios, n=4)
    return (
        statistics.median(times["candidate"]),
        statistics.median(times["baseline"]),
        statistics.median(ratios),
        quartiles[0],
        quartiles[2],
    )


def report(title: str, candidate: Callable[[], None], baseline: Callable[[], None], rounds: int) -> None:
    for _ in range(20):  # warm-up
        candidate()
        baseline()
    new, old, ratio, low, high = interleaved_ratio(candidate, baseline, rounds)
    print(
        f"  {title:58s} {1e6 * new:8.1f} us against {1e6 * old:8.1f} us   ratio {ratio:.2f}x "
        f"(quartiles {low:.2f}-{high:.2f})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=400)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(
        f"== fixed costs, {args.threads} thread(s), {args.rounds} interleaved rounds (library path / standard path)"
    )

    x = torch.rand(128, 64, requires_grad=True)
    activation = MaxMin()
    layer = OrthogonalLinear(64, 64)
    retract_weights_(layer)
    for title, call in (
        ("MaxMin forward, (128, 64)", lambda: activation(x)),
        ("retracted OrthogonalLinear 64 x 64 forward, batch 128", lambda: layer(x)),
    ):
        report(title, _with_apply(_LIBRARY_APPLY, call), _with_apply(_STANDARD_APPLY, call), args.rounds)

    model = LipschitzMLP(64, 10, hidden_features=[64] * 6)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    batch, target = torch.rand(128, 64), torch.randint(0, 10, (128,))

    def forward_backward() -> None:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(batch), target).backward()

    retract_weights_(model)
    report(
        "quickstart MLP forward + backward, batch 128, retracted",
        _with_apply(_LIBRARY_APPLY, forward_backward),
        _with_apply(_STANDARD_APPLY, forward_backward),
        args.rounds // 4,
    )

    def each_layer() -> None:
        for module in model.modules():
            if isinstance(module, OrthogonalLinear):
                module.retract_(1)

    report(
        "retract_weights_ (together) against each layer's retract_",
        lambda: retract_weights_(model, 1),
        each_layer,
        args.rounds // 4,
    )

    kernel = torch.randn(6, 16, 16, 1, 1, requires_grad=True)
    bases = torch.linalg.qr(torch.randn(6, 4, 16, 8)).Q.requires_grad_()
    kernel_gradient = torch.randn(6, 16, 16, 3, 3)
    report(
        "BCOP projection steps, six 16-channel 3 x 3 kernels, fwd + bwd",
        lambda: _bcop_kernel(kernel, bases).backward(kernel_gradient),
        lambda: _bcop_kernel_by_steps(kernel, bases).backward(kernel_gradient),
        args.rounds,
    )

    features = torch.randn(128, 16, 7, 7, requires_grad=True)
    padded_gradient = torch.randn(128, 16, 9, 9)
    report(
        "circular_pad (128, 16, 7, 7) by 1, forward + backward",
        lambda: circular_pad(features, (1, 1, 1, 1)).backward(padded_gradient),
        lambda: F.pad(features, (1, 1, 1, 1), mode="circular").backward(padded_gradient),
        args.rounds // 4,
    )

    from PIL import Image

    data = DigitsDataModule()
    data.setup("fit")
    digits, labels = next(iter(data.val_dataloader()))
    explanation = explain(model.eval(), digits[:10], clamp=(0.0, 1.0))
    grid = render_explanation(explanation, caption_lines(explanation, labels[:10]), (0.0, 1.0), panel_size=48)

    def pillow_png() -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(grid).save(buffer, format="PNG", compress_level=1)
        return buffer.getvalue()

    report(
        f"PNG of the quickstart's explanation grid {grid.shape[1]} x {grid.shape[0]}, zlib level 1",
        lambda: encode_png(grid),
        pillow_png,
        max(2, args.rounds // 8),
    )
    print(f"  PNG sizes: {len(encode_png(grid)) / 1e3:.1f} kB against {len(pillow_png()) / 1e3:.1f} kB")


if __name__ == "__main__":
    main()
