"""A 1-Lipschitz multilayer perceptron."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from lightning_ot.nn import MaxMin, Normalize, OrthogonalLinear

__all__ = ["LipschitzMLP"]


class LipschitzMLP(nn.Module):
    """Flatten, then orthogonal linear layers with MaxMin activations: 1-Lipschitz in L2 (times the
    optional input normalization's factor).

    Gradient-norm preserving (``||grad f_k|| = 1`` for every input and output, what tight
    certificates and optimal-transport saliency need) when no width exceeds the one before it and
    ``num_outputs`` is at most the last width: a widening layer is at best an isometry, whose
    transpose drops the part of the gradient outside its range (about ``sqrt(d_in / d_out)`` of it at
    initialization; training recovers only part of it). The default widths never widen.

    Args:
        in_features: number of input values per sample (e.g. 64 for 8x8 images).
        num_outputs: 1 for binary hKR, C for C classes.
        hidden_features: widths of the hidden layers (each even, for MaxMin); default three layers
            of ``min(256, in_features)`` (rounded down to even).
        normalize_mean, normalize_std: optional per-channel input normalization.

    Shape:
        - input: (B, *) with ``in_features`` values after flattening
        - output: (B, num_outputs)

    Example:
        >>> model = LipschitzMLP(in_features=64, num_outputs=10, hidden_features=(32, 32))
        >>> model(torch.rand(2, 1, 8, 8)).shape
        torch.Size([2, 10])
    """

    lipschitz_composition = "sequential"

    def __init__(
        self,
        in_features: int,
        num_outputs: int,
        hidden_features: Sequence[int] | None = None,
        normalize_mean: Sequence[float] | None = None,
        normalize_std: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        if in_features < 1 or num_outputs < 1:
            raise ValueError(
                f"`in_features` and `num_outputs` must be positive, got {in_features}, {num_outputs}"
            )
        if hidden_features is None:
            width = min(256, in_features - in_features % 2)
            hidden_features = (width,) * 3 if width >= 2 else ()
        if any(width % 2 or width < 2 for width in hidden_features):
            raise ValueError(f"`hidden_features` must be even for MaxMin, got {list(hidden_features)}")
        layers: list[nn.Module] = []
        if normalize_mean is not None or normalize_std is not None:
            if normalize_mean is None or normalize_std is None:
                raise ValueError("give both `normalize_mean` and `normalize_std`, or neither")
            layers.append(Normalize(normalize_mean, normalize_std))
        layers.append(nn.Flatten())
        width = in_features
        for hidden in hidden_features:
            layers += [OrthogonalLinear(width, hidden), MaxMin()]
            width = hidden
        layers.append(OrthogonalLinear(width, num_outputs))
        self.layers = nn.Sequential(*layers)

    def forward(self, input: Tensor) -> Tensor:
        return self.layers(input)
