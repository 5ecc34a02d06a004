"""Retraction: keep the raw matrices of orthogonal layers near orthonormal, the network unchanged.

An orthogonal layer trains an unconstrained matrix ``W`` and uses its Björck orthonormalization
(the polar factor ``U V^T`` of ``W = U S V^T``). The optimizer moves ``W`` freely, and after a few
hundred Adam steps its singular values spread (condition numbers of 10-100 on a 512 x 784 layer at
learning rate 5e-3), so that Björck's iteration needs 10-12 steps, forward and backward, at every
training step, instead of one. Replacing ``W`` by a Björck step of itself leaves the polar factor,
hence the network's function, unchanged (the step changes the singular values, not the singular
vectors) and brings the singular values back toward 1: one such step after every optimizer step,
without autograd, keeps the raw matrices near orthonormal. This is the polar retraction
of optimization on the Stiefel manifold (Absil, Mahony and Sepulchre, *Optimization Algorithms on
Matrix Manifolds*, 2008, section 4.1), applied after an unconstrained step.

Until a retracted matrix changes again, the layers' training forwards use it as it is, provided it
is near orthonormal (root mean square of ``lambda - 1`` over its Gram eigenvalues <= 0.02; early in
training, when one retraction step leaves singular values far below 1, Björck's iteration still
runs): one Björck step from a start below ``sqrt 3`` leaves every singular value in [0, 1], so the
training network is 1-Lipschitz. Its gradient is projected on the tangent
space of the orthonormal matrices at it, ``G - 0.5 (G W^T + W G^T) W``, which is the gradient of
the orthonormalization there (the projected gradient of manifold optimization): no Björck step runs
forward or backward, only the retraction's. An :class:`~lightning_ot.nn.OrthogonalLinear` whose
batch has fewer rows ``B`` than ``min(in_features, out_features)`` computes that projection from the
batch (``delta^T (x - 0.5 y W) - 0.5 y^T (delta W)`` with ``y = x W^T``: products with ``B`` rows,
not with the whole ``m x n`` gradient: for the mnist5k head, 784 -> 512 at batch 128, what the
backward adds to a plain layer's is 4x smaller). Eval forwards, certificates, explanations and exports
still use the fully orthonormalized, certified weights. The mark is kept in the state dict (key
``retracted``, only when set) and survives an in-place write of the same values, so a resumed fit
and DDP's broadcast train exactly as the uninterrupted fit does. The nearness test takes a bound
from the Gram matrix the retraction computes anyway (a Björck step maps ``1 + d`` to
``1 - d^2 (3 - d) / 4``), and computes the Gram matrix of the result only when that bound is not
enough (early in training); it reads one number back per matrix and retraction (a synchronization
on an accelerator; not measured on a GPU). :func:`retract_weights_` retracts the small matrices
(fewer than 256 rows on their wide side) of the library's layers that share a shape, dtype and
device in one batched pass, each ending as its layer's own ``retract_`` leaves it: such matrices
cost their operations' dispatch more than their arithmetic. A larger matrix is retracted alone, its
Gram product computed from the blocks on and above its diagonal.
"""

from __future__ import annotations

from torch import nn
from torch.nn.utils import parametrize

from lightning_ot.nn.conv import OrthogonalConv2d
from lightning_ot.nn.linear import (
    BjorckOrthogonalization,
    OrthogonalLinear,
    _PlannedRetraction,
    _retract_planned,
    retract_matrix_,
)

__all__ = ["retract_weights_"]


def retract_weights_(module: nn.Module, steps: int = 1) -> int:
    """Retract the raw matrices of every orthogonal layer in ``module``, in place; return their count.

    Applies ``steps`` Björck steps (no autograd) to the raw parameters of each submodule with a
    ``retract_`` method (:class:`~lightning_ot.nn.OrthogonalLinear`,
    :class:`~lightning_ot.nn.OrthogonalConv2d`) and to the original of every weight parametrized by
    :class:`~lightning_ot.nn.BjorckOrthogonalization` alone. The module computes the same function
    afterwards (to float32 rounding, about 1e-6 relative); only the raw parameters move, toward the
    orthonormal matrices they stand for, and the next training forward uses them as they are (see
    the module docstring). Call it after ``optimizer.step()``; ``OTClassifier(retraction_steps=1)``
    does.

    Args:
        module: any module; submodules without orthogonal layers are left alone.
        steps: Björck steps per matrix (>= 1). One is enough after each optimizer step.

    Returns:
        The number of layers retracted.

    Small matrices of the library's layers (fewer than 256 rows on their wide side) with the same
    shape, dtype and device are retracted together in one batched pass; a layer whose class
    overrides ``retract_`` is called on its own.

    Example:
        >>> import torch
        >>> from lightning_ot.nn import OrthogonalLinear
        >>> layer = OrthogonalLinear(8, 8)
        >>> with torch.no_grad():
        ...     _ = layer.weight_orig.mul_(torch.linspace(0.2, 2.0, 8))  # drifted columns
        >>> x = torch.randn(3, 8)
        >>> before = layer.eval()(x)  # the orthonormalized weight
        >>> retract_weights_(layer, steps=3)
        1
        >>> torch.allclose(layer(x), before, atol=1e-5)
        True
    """
    if steps < 1:
        raise ValueError(f"`steps` must be >= 1, got {steps}")
    count = 0
    # the library's layers are retracted together, so that matrices of one shape share one batched
    # pass; a layer whose class overrides `retract_` gets its own call
    plans: list[_PlannedRetraction] = []
    for submodule in module.modules():
        retract = getattr(submodule, "retract_", None)
        if callable(retract):
            if getattr(type(submodule), "retract_", None) in _PLANNED:
                plans.extend(submodule._retraction_plan())  # type: ignore[operator]
            else:
                retract(steps)
            count += 1
        elif parametrize.is_parametrized(submodule):
            for parametrizations in submodule.parametrizations.values():
                if len(parametrizations) == 1 and isinstance(parametrizations[0], BjorckOrthogonalization):
                    retract_matrix_(parametrizations.original, steps)
                    count += 1
    _retract_planned(plans, steps)
    return count


#: the ``retract_`` methods that :meth:`_retraction_plan` describes
_PLANNED = (OrthogonalLinear.retract_, OrthogonalConv2d.retract_)
