"""Lipschitz audit of any ``nn.Module``: per-layer operator norms, a global bound, empirical figures.

* Per layer: the operator norm of every affine layer (``nn.Linear``, convolutions, average pooling,
  eval-mode batch norm, the orthogonal layers, ...) by power iteration on the *actual* operator,
  ``v -> layer(v) - layer(0)`` at the input shape the layer sees in the model (so its own padding
  and stride count); the declared bound of layers that carry a ``lipschitz_bound``
  (MaxMin, GroupSort, L2-norm pooling, ...); and how much the layer keeps norms (forward gain
  ``||A x|| / ||x||`` and backward gain ``||A^T g|| / ||g||`` for random ``x``, ``g``).
* Global upper bound: the product of the layer bounds along ``nn.Sequential`` containers and modules
  that declare ``lipschitz_composition = "sequential"``; ``(1 - t) + t L`` for
  :class:`LipschitzResidual`; the largest of the blocks' bounds for :class:`BlockDiagonal`; ``None``
  when some part of the model is unknown.
* Empirical lower estimate: the largest ``||f(x) - f(y)|| / ||x - y||`` found by gradient ascent on
  pairs of inputs from random (or given) starts, and the largest input-gradient norm; any
  model, no assumption.
* Gradient-norm preservation (tightness): median, 10th percentile, mean and minimum of
  ``||grad_x f_k(x)||`` for the top output ``k``. A 1-Lipschitz network whose layers all preserve
  gradient norms has 1 everywhere; below 1 its certificates are loose and its saliency maps and
  transports are not the optimal-transport plan (see the docs' Concepts page).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from lightning_ot.nn.block_diagonal import BlockDiagonal
from lightning_ot.nn.normalization import Normalize
from lightning_ot.nn.residual import LipschitzResidual

__all__ = ["LayerReport", "LipschitzReport", "empirical_lipschitz", "gradient_norms", "lipschitz_audit"]

_AFFINE_TYPES: tuple[type[nn.Module], ...] = (
    nn.Linear,
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AvgPool3d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.PixelUnshuffle,
    nn.PixelShuffle,
)
_ONE_LIPSCHITZ_TYPES: tuple[type[nn.Module], ...] = (
    nn.ReLU,
    nn.ReLU6,
    nn.Tanh,
    nn.Hardtanh,
    nn.Identity,
    nn.Flatten,
    nn.Unflatten,
    nn.Dropout,
    nn.ELU,
    nn.GELU,
    nn.SiLU,
)
_KNOWN_BOUNDS: dict[type[nn.Module], float] = {nn.Sigmoid: 0.25, nn.GELU: 1.13, nn.SiLU: 1.1}


@dataclass
class LayerReport:
    """Audit figures of one layer.

    Attributes:
        name: qualified module name in the model.
        kind: class name.
        input_shape: shape of one input sample as seen in the model.
        bound: the bound used for the global bound (declared, else measured), or ``None``.
        declared: the layer's own ``lipschitz_bound`` (or known constant), if any.
        operator_norm: power-iteration operator norm (affine layers only).
        forward_gain, backward_gain: mean ``||A x|| / ||x||`` and ``||A^T g|| / ||g||`` (affine only).
    """

    name: str
    kind: str
    input_shape: tuple[int, ...]
    bound: float | None = None
    declared: float | None = None
    operator_norm: float | None = None
    forward_gain: float | None = None
    backward_gain: float | None = None


@dataclass
class LipschitzReport:
    """Result of :func:`lipschitz_audit`.

    Attributes:
        layers: one :class:`LayerReport` per known layer, in call order.
        upper_bound: global upper bound, ``None`` when some part is unknown.
        unknown: names of the modules that prevent a global bound.
        empirical: largest local Lipschitz ratio found (a lower estimate of the true constant).
        gradient_norm_median, gradient_norm_p10, gradient_norm_mean, gradient_norm_min: statistics of
            the input-gradient norms ``||grad f_k||`` of the top output (1 for a tight network).
    """

    layers: list[LayerReport] = field(default_factory=list)
    upper_bound: float | None = None
    unknown: list[str] = field(default_factory=list)
    empirical: float | None = None
    gradient_norm_median: float | None = None
    gradient_norm_p10: float | None = None
    gradient_norm_mean: float | None = None
    gradient_norm_min: float | None = None

    @property
    def max_operator_norm(self) -> float | None:
        norms = [layer.operator_norm for layer in self.layers if layer.operator_norm is not None]
        return max(norms) if norms else None

    def __str__(self) -> str:
        def fmt(value: float | None) -> str:
            return "-" if value is None else f"{value:.6f}"

        lines = [
            f"{'layer':40s} {'kind':22s} {'bound':>9s} {'op. norm':>9s} {'fwd gain':>9s} {'bwd gain':>9s}"
        ]
        for layer in self.layers:
            lines.append(
                f"{layer.name[:40]:40s} {layer.kind[:22]:22s} {fmt(layer.bound):>9s} "
                f"{fmt(layer.operator_norm):>9s} {fmt(layer.forward_gain):>9s} {fmt(layer.backward_gain):>9s}"
            )
        lines.append(
            f"upper bound: {fmt(self.upper_bound)}" + (f" (unknown: {self.unknown})" if self.unknown else "")
        )
        lines.append(f"empirical lower estimate: {fmt(self.empirical)}")
        lines.append(
            f"gradient norm of top output: median {fmt(self.gradient_norm_median)}, "
            f"10th percentile {fmt(self.gradient_norm_p10)}, mean {fmt(self.gradient_norm_mean)}, "
            f"min {fmt(self.gradient_norm_min)}"
        )
        return "\n".join(lines)


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        yield
    finally:
        for module, mode in modes.items():
            module.training = mode


def _declared_bound(module: nn.Module) -> float | None:
    declared = getattr(module, "lipschitz_bound", None)
    if declared is not None:
        return float(declared)
    if isinstance(module, Normalize):
        return module.lipschitz_factor
    for kind, bound in _KNOWN_BOUNDS.items():
        if isinstance(module, kind):
            return bound
    if isinstance(module, nn.LeakyReLU):
        return max(1.0, abs(module.negative_slope))
    if isinstance(module, _ONE_LIPSCHITZ_TYPES):
        return 1.0
    if isinstance(module, nn.MaxPool2d | nn.MaxPool1d):
        kernel = torch.nn.modules.utils._pair(module.kernel_size)
        stride = torch.nn.modules.utils._pair(module.stride or module.kernel_size)
        return math.sqrt(math.ceil(kernel[0] / stride[0]) * math.ceil(kernel[-1] / stride[-1]))
    return None


def _is_affine(module: nn.Module) -> bool:
    from lightning_ot.nn.conv import OrthogonalConv2d
    from lightning_ot.nn.pooling import InvertibleDownsampling

    return isinstance(module, (*_AFFINE_TYPES, OrthogonalConv2d, InvertibleDownsampling))


def _layer_dtype_device(layer: nn.Module) -> tuple[torch.dtype, torch.device]:
    tensor = next(layer.parameters(), None)
    if tensor is None:
        tensor = next(layer.buffers(), None)
    if tensor is None or not tensor.is_floating_point():
        return torch.float32, tensor.device if tensor is not None else torch.device("cpu")
    return tensor.dtype, tensor.device


def _affine_figures(
    layer: nn.Module, shape: tuple[int, ...], iterations: int, generator: torch.Generator
) -> tuple[float, float, float]:
    """Operator norm (power iteration on A^T A), forward and backward gains of an affine layer."""
    dtype, device = _layer_dtype_device(layer)

    def random(*size: int) -> Tensor:
        return torch.randn(size, generator=generator).to(device=device, dtype=dtype)

    with torch.no_grad():
        offset = layer(torch.zeros((1, *shape), device=device, dtype=dtype))

    def linear_part(v: Tensor) -> Tensor:
        return layer(v) - offset

    vector = random(1, *shape)
    norm = 0.0
    for _ in range(iterations):
        vector = (vector / vector.norm().clamp_min(1e-30)).requires_grad_(True)
        output = linear_part(vector)
        (gram_vector,) = torch.autograd.grad(0.5 * output.square().sum(), vector)
        previous, norm = norm, gram_vector.norm().sqrt().item()
        vector = gram_vector.detach()
        if abs(norm - previous) <= 1e-6 * max(norm, 1e-12):
            break
    samples = random(4, *shape).requires_grad_(True)
    outputs = linear_part(samples)
    cotangent = torch.randn(outputs.shape, generator=generator).to(device=device, dtype=dtype)
    (pulled,) = torch.autograd.grad(outputs, samples, cotangent)
    forward = (outputs.detach().flatten(1).norm(dim=1) / samples.detach().flatten(1).norm(dim=1)).mean()
    backward = (pulled.flatten(1).norm(dim=1) / cotangent.flatten(1).norm(dim=1)).mean()
    return norm, float(forward), float(backward)


def _global_bound(
    module: nn.Module, bounds: dict[nn.Module, float | None], name: str, unknown: list[str]
) -> float | None:
    if module in bounds and bounds[module] is not None:
        return bounds[module]
    if isinstance(module, LipschitzResidual):
        branch = _global_bound(module.branch, bounds, f"{name}.branch", unknown)
        if branch is None:
            return None
        t = module.weight_of_branch
        return (1 - t) + t * branch
    if isinstance(module, BlockDiagonal):
        block_bounds = [
            _global_bound(block, bounds, f"{name}.blocks.{index}".lstrip("."), unknown)
            for index, block in enumerate(module.blocks)
        ]
        if any(bound is None for bound in block_bounds):
            return None
        return max(bound for bound in block_bounds if bound is not None)
    if isinstance(module, nn.Sequential) or getattr(module, "lipschitz_composition", None) == "sequential":
        product: float | None = 1.0
        for child_name, child in module.named_children():
            child_bound = _global_bound(child, bounds, f"{name}.{child_name}".lstrip("."), unknown)
            product = None if product is None or child_bound is None else product * child_bound
        return product
    unknown.append(name or type(module).__name__)
    return None


def _check_finite_inputs(inputs: Tensor) -> None:
    if not isinstance(inputs, Tensor) or inputs.ndim < 2 or inputs.shape[0] < 1:
        shape = tuple(inputs.shape) if isinstance(inputs, Tensor) else type(inputs).__name__
        raise ValueError(f"`inputs` must be a (B, ...) batch, got {shape}")
    if inputs.is_floating_point() and not bool(torch.isfinite(inputs).all()):
        count = int((~torch.isfinite(inputs)).sum())
        raise ValueError(
            f"`inputs` (shape {tuple(inputs.shape)}) contains {count} non-finite value(s) (NaN or inf): "
            "a Lipschitz constant cannot be measured from them"
        )


def _check_audit_inputs(model: nn.Module, inputs: Tensor) -> None:
    """Refuse non-finite inputs and a model whose output is not a (B, ...) tensor, before measuring."""
    _check_finite_inputs(inputs)
    with torch.no_grad(), _eval_mode(model):  # eval: no running statistic moves
        outputs = model(inputs[:2])
    if not isinstance(outputs, Tensor):
        raise TypeError(
            f"the model must return a (B, K) tensor, got a {type(outputs).__name__}: audit a module whose "
            "forward returns the logits alone"
        )
    if outputs.ndim < 2 or outputs.shape[0] != min(2, inputs.shape[0]):
        raise ValueError(
            f"the model must return a (B, K) tensor for a batch of {min(2, inputs.shape[0])} inputs, got shape "
            f"{tuple(outputs.shape)}" + (" (return (B, 1) for a single output)" if outputs.ndim == 1 else "")
        )


def _scalar_outputs(outputs: Tensor, output_index: int | None) -> Tensor:
    outputs = outputs.reshape(outputs.shape[0], -1)
    if outputs.shape[1] == 1:
        return outputs[:, 0]
    if output_index is not None:
        return outputs[:, output_index]
    return outputs.gather(1, outputs.detach().argmax(dim=1, keepdim=True))[:, 0]


def gradient_norms(model: nn.Module, inputs: Tensor, output_index: int | None = None) -> Tensor:
    """(B,) norms of ``grad_x f_k(x)`` where ``k`` is the top output of each sample (or ``output_index``).

    For a gradient-norm-preserving 1-Lipschitz network these are close to 1.

    Example:
        >>> gradient_norms(nn.Linear(3, 1, bias=False).requires_grad_(False), torch.randn(2, 3)).shape
        torch.Size([2])
    """
    _check_audit_inputs(model, inputs)
    with torch.inference_mode(False), torch.enable_grad():
        inputs = inputs.detach().clone().requires_grad_(True)
        scalars = _scalar_outputs(model(inputs), output_index)
        (grad,) = torch.autograd.grad(scalars.sum(), inputs)
    return grad.flatten(1).norm(dim=1)


def empirical_lipschitz(
    model: nn.Module,
    inputs: Tensor,
    steps: int = 30,
    step_size: float = 0.01,
    generator: torch.Generator | None = None,
) -> float:
    """Largest ``||f(x) - f(y)|| / ||x - y||`` found by gradient ascent on pairs started at ``inputs``.

    A lower estimate of the Lipschitz constant of ``model`` (any module). The model's parameters get
    no gradient. ``step_size`` is relative to the inputs' standard deviation.

    Example:
        >>> layer = nn.Linear(4, 4, bias=False)
        >>> with torch.no_grad():
        ...     _ = layer.weight.copy_(3 * torch.eye(4))
        >>> round(empirical_lipschitz(layer, torch.randn(8, 4)), 4)
        3.0
    """
    _check_audit_inputs(model, inputs)
    scale = float(inputs.detach().float().std()) if inputs.numel() > 1 else 1.0
    scale = scale if math.isfinite(scale) and scale > 0 else 1.0
    with torch.inference_mode(False), torch.enable_grad():
        first = inputs.detach().clone()
        noise = torch.randn(first.shape, generator=generator, dtype=first.dtype).to(first.device)
        second = (first + 1e-2 * scale * noise).requires_grad_(True)
        first.requires_grad_(True)
        optimizer = torch.optim.Adam([first, second], lr=step_size * scale)
        best = 0.0
        for _ in range(max(1, steps)):
            gap = (first - second).flatten(1).norm(dim=1)
            ratio = (model(first) - model(second)).flatten(1).norm(dim=1) / gap.clamp_min(1e-12)
            valid = gap > 1e-6 * scale
            if valid.any():
                best = max(best, float(ratio.detach()[valid].max()))
            grads = torch.autograd.grad(-ratio[valid].sum(), [first, second]) if valid.any() else None
            if grads is None:
                break
            first.grad, second.grad = grads
            optimizer.step()
    return best


def lipschitz_audit(
    model: nn.Module,
    input_shape: Sequence[int],
    inputs: Tensor | None = None,
    *,
    layers: bool = True,
    empirical: bool = True,
    num_starts: int = 16,
    ascent_steps: int = 30,
    power_iterations: int = 50,
    seed: int = 0,
) -> LipschitzReport:
    """Audit the Lipschitz constant of ``model`` (see the module docstring for what is measured).

    The model runs in eval mode during the audit (restored after); its parameters and the global
    random state are left untouched (a private generator seeded with ``seed`` is used).

    Args:
        model: any module mapping (B, *input_shape) to (B, *).
        input_shape: shape of one input sample, without the batch dimension, e.g. ``(1, 28, 28)``.
        inputs: optional (B, *input_shape) batch of real inputs used as starts for the empirical part
            and the gradient norms; default ``num_starts`` standard normal samples.
        layers: compute the per-layer figures and the global bound.
        empirical: compute the empirical estimate and the gradient norms.
        num_starts: random starts when ``inputs`` is not given.
        ascent_steps: gradient-ascent steps of the empirical estimate.
        power_iterations: maximum power iterations per affine layer.
        seed: seed of the private generator.

    Returns:
        a :class:`LipschitzReport`.

    Example:
        >>> from lightning_ot.models import LipschitzMLP
        >>> report = lipschitz_audit(LipschitzMLP(16, 4, hidden_features=(8,)), (16,))
        >>> report.upper_bound <= 1 + 1e-4 and report.empirical <= 1 + 1e-4
        True
    """
    input_shape = tuple(int(size) for size in input_shape)
    if inputs is not None:
        _check_finite_inputs(inputs)
    if inputs is not None and tuple(inputs.shape[1:]) != input_shape:
        raise ValueError(
            f"`inputs` has sample shape {tuple(inputs.shape[1:])}, expected `input_shape` {input_shape}"
        )
    generator = torch.Generator().manual_seed(seed)
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    dtype = parameter.dtype if parameter is not None and parameter.is_floating_point() else torch.float32
    report = LipschitzReport()
    with _eval_mode(model):
        if layers:
            shapes: dict[nn.Module, tuple[str, tuple[int, ...]]] = {}
            names = {module: name for name, module in model.named_modules()}

            def record_shape(module: nn.Module, args: tuple) -> None:
                if args and isinstance(args[0], Tensor) and module not in shapes:
                    shapes[module] = (names[module], tuple(args[0].shape[1:]))

            handles = [module.register_forward_pre_hook(record_shape) for module in model.modules()]
            try:
                with torch.no_grad():
                    probe = torch.randn((2, *input_shape), generator=generator).to(device=device, dtype=dtype)
                    model(probe)
            finally:
                for handle in handles:
                    handle.remove()
            bounds: dict[nn.Module, float | None] = {}
            for module, (name, shape) in shapes.items():
                declared = _declared_bound(module)
                if not _is_affine(module) and declared is None:
                    continue
                entry = LayerReport(
                    name=name, kind=type(module).__name__, input_shape=shape, declared=declared
                )
                if _is_affine(module):
                    with torch.inference_mode(False), torch.enable_grad():
                        entry.operator_norm, entry.forward_gain, entry.backward_gain = _affine_figures(
                            module, shape, power_iterations, generator
                        )
                entry.bound = declared if declared is not None else entry.operator_norm
                bounds[module] = entry.bound
                report.layers.append(entry)
            report.upper_bound = _global_bound(model, bounds, "", report.unknown)
        if empirical:
            if inputs is None:
                inputs = torch.randn((num_starts, *input_shape), generator=generator)
            inputs = inputs.detach().to(device=device, dtype=dtype)
            report.empirical = empirical_lipschitz(model, inputs, steps=ascent_steps, generator=generator)
            norms = gradient_norms(model, inputs)
            report.empirical = max(report.empirical, float(norms.max()))
            report.gradient_norm_median = float(norms.median())
            report.gradient_norm_p10 = float(norms.float().quantile(0.1))
            report.gradient_norm_mean = float(norms.mean())
            report.gradient_norm_min = float(norms.min())
    return report
