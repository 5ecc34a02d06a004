"""A 1-Lipschitz multilayer perceptron."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from lightning_ot.nn import MaxMin, Normalize, OrthogonalLinear

__all__ = ["LipschitzMLP"]


class LipschitzMLP(nn.Module):
    """Flatten, then orthogonal linear layers with MaxMin activations: 1-Lipschitz in L2 (times the
    optional input normalization's factor) and gradient-norm preserving.

    Args:
        in_features: number of input values per sample (e.g. 64 for 8x8 images).
        num_outputs: 1 for binary hKR, C for C classes.
        hidden_features: widths of the hidden layers (each even, for MaxMin).
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
        hidden_features: Sequence[int] = (256, 256, 256),
        normalize_mean: Sequence[float] | None = None,
        normalize_std: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        if any(width % 2 for width in hidden_features):
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
