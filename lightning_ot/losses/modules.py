"""``nn.Module`` forms of the hKR loss family. Each ``forward`` returns the scalar loss; ``terms``
returns the loss with its KR and hinge components, for logging."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn

from lightning_ot.losses import functional as F
from lightning_ot.losses.functional import HKRTerms

__all__ = ["HKRLoss", "HingeMarginLoss", "KRLoss", "SoftHKRLoss"]


def _signs_for(logits: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """Scores and -1/+1 signs of the same shape, for binary (B,)/(B, 1) or one-vs-all (B, C) logits."""
    if logits.ndim == 1 or (logits.ndim == 2 and logits.shape[1] == 1):
        scores = logits.reshape(-1)
        return scores, F.to_signed_targets(target, scores.shape[0]).to(scores.dtype)
    if logits.ndim != 2:
        raise ValueError(f"`logits` must have shape (B,), (B, 1) or (B, C), got {tuple(logits.shape)}")
    index = F.check_class_indices(target, logits.shape[0], logits.shape[1])
    return logits, 2.0 * nn.functional.one_hot(index, logits.shape[1]).to(logits.dtype) - 1.0


class KRLoss(nn.Module):
    """Negative class-balanced Kantorovich-Rubinstein estimate, ``-(mean_{y=+1} f - mean_{y=-1} f)``.

    Minimizing it maximizes the dual estimate of the Wasserstein-1 distance between the classes when
    ``f`` is 1-Lipschitz. Binary logits (B,) or (B, 1) take labels in {0, 1} or {-1, +1}; (B, C)
    logits take class indices and are treated one-vs-all.

    Example:
        >>> KRLoss()(torch.tensor([[2.0], [-1.0]]), torch.tensor([1, 0]))
        tensor(-3.)
    """

    def __init__(self, distributed: bool = True) -> None:
        super().__init__()
        self.distributed = distributed

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        scores, signs = _signs_for(logits, target)
        return -F.kantorovich_rubinstein(scores, signs, self.distributed)


class HingeMarginLoss(nn.Module):
    """Mean hinge ``ReLU(margin - y f)``; binary or one-vs-all like :class:`KRLoss`.

    Example:
        >>> HingeMarginLoss(margin=1.0)(torch.tensor([0.5, -2.0]), torch.tensor([1, 0]))
        tensor(0.2500)
    """

    def __init__(self, margin: float = 1.0) -> None:
        super().__init__()
        F.check_loss_parameters(margin=margin)
        self.margin = margin

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        scores, signs = _signs_for(logits, target)
        return F.hinge_margin(scores, signs, self.margin)

    def extra_repr(self) -> str:
        return f"margin={self.margin}"


class HKRLoss(nn.Module):
    """hKR loss ``hinge_weight * hinge(margin) - KR``: binary for (B,) / (B, 1) logits, one-vs-all
    for (B, C) logits.

    Args:
        margin: the hinge margin ``m``: each class is pushed to distance ``m`` from the boundary.
        hinge_weight: ``lambda``, the weight of the hinge against KR (the paper uses 5 to 500).
        distributed: KR class means over all processes under ``torch.distributed`` (exact DDP).
        check_inputs: validate label shapes and values and the finiteness of the logits.

    Shape:
        - logits: (B,), (B, 1) or (B, C)
        - target: (B,) or (B, 1) labels in {0, 1} / {-1, +1} for binary logits, (B,) indices otherwise
        - output: scalar

    Example:
        >>> loss = HKRLoss(margin=0.5, hinge_weight=10.0)
        >>> loss(torch.tensor([[1.0], [-1.0]]), torch.tensor([1, 0]))
        tensor(-2.)
    """

    def __init__(
        self,
        margin: float = 1.0,
        hinge_weight: float = 10.0,
        distributed: bool = True,
        check_inputs: bool = True,
    ) -> None:
        super().__init__()
        F.check_loss_parameters(margin=margin, hinge_weight=hinge_weight)
        self.margin = margin
        self.hinge_weight = hinge_weight
        self.distributed = distributed
        self.check_inputs = check_inputs

    def terms(self, logits: Tensor, target: Tensor) -> HKRTerms:
        """The loss with its KR and hinge components."""
        if logits.ndim == 2 and logits.shape[1] > 1:
            return F.multiclass_hkr(
                logits, target, self.margin, self.hinge_weight, self.distributed, self.check_inputs
            )
        return F.binary_hkr(
            logits, target, self.margin, self.hinge_weight, self.distributed, self.check_inputs
        )

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return self.terms(logits, target).loss

    def extra_repr(self) -> str:
        return f"margin={self.margin}, hinge_weight={self.hinge_weight}"


class SoftHKRLoss(nn.Module):
    """Softmax-weighted multiclass hKR with an adaptive temperature (Serrurier et al., NeurIPS 2023).

    The effective softmax temperature is ``temperature * margin / mu`` where ``mu`` is a running mean
    of ``|f|`` kept in the buffer ``mean_abs_logit`` (updated in training mode only, without
    gradient, averaged over all processes under ``torch.distributed`` so every rank holds the same
    value; it is saved in ``state_dict`` and therefore in checkpoints).

    Args:
        margin: hinge margin ``m``.
        hinge_weight: ``lambda``, weight of the hinge against KR.
        temperature: the dimensionless temperature (10 on FashionMNIST, 200 on ImageNet in the paper).
        momentum: weight of the past in the running mean, ``mu <- momentum * mu + (1 - momentum) * |f|``.
        check_inputs: validate label shapes and values and the finiteness of the logits.

    Shape:
        - logits: (B, C), C >= 2
        - target: (B,) class indices
        - output: scalar

    Example:
        >>> loss = SoftHKRLoss(margin=0.5, hinge_weight=5.0, temperature=10.0)
        >>> value = loss(torch.randn(8, 10), torch.randint(0, 10, (8,)))
        >>> value.shape
        torch.Size([])
    """

    mean_abs_logit: Tensor

    def __init__(
        self,
        margin: float = 1.0,
        hinge_weight: float = 10.0,
        temperature: float = 10.0,
        momentum: float = 0.99,
        check_inputs: bool = True,
    ) -> None:
        super().__init__()
        F.check_loss_parameters(
            margin=margin, hinge_weight=hinge_weight, temperature=temperature, momentum=momentum
        )
        self.margin = margin
        self.hinge_weight = hinge_weight
        self.temperature = temperature
        self.momentum = momentum
        self.check_inputs = check_inputs
        self.register_buffer("mean_abs_logit", torch.empty(()))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Reset the running mean of ``|f|`` to ``margin``."""
        with torch.no_grad():
            self.mean_abs_logit.fill_(self.margin)

    @torch.no_grad()
    def _update_running_mean(self, logits: Tensor) -> None:
        stats = torch.stack([logits.abs().sum(), torch.tensor(logits.numel(), device=logits.device)])
        stats = stats.to(torch.float32)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(stats)
        batch_mean = stats[0] / stats[1]
        self.mean_abs_logit.mul_(self.momentum).add_((1.0 - self.momentum) * batch_mean)

    def effective_temperature(self) -> Tensor:
        """The temperature ``T`` that scales the logits inside the softmax."""
        return F.soft_hkr_temperature(self.temperature, self.margin, self.mean_abs_logit)

    def terms(self, logits: Tensor, target: Tensor) -> HKRTerms:
        """The loss with its KR and hinge components; updates the running mean in training mode."""
        if self.training:
            self._update_running_mean(logits.detach())
        return F.soft_hkr(
            logits, target, self.margin, self.hinge_weight, self.effective_temperature(), self.check_inputs
        )

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return self.terms(logits, target).loss

    def extra_repr(self) -> str:
        return (
            f"margin={self.margin}, hinge_weight={self.hinge_weight}, temperature={self.temperature}, "
            f"momentum={self.momentum}"
        )
