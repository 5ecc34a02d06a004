"""What autograd recorded: the names of the functions in a tensor's graph."""

from __future__ import annotations

from torch import Tensor


def graph_functions(tensor: Tensor) -> set[str]:
    """Names of the autograd functions that computed ``tensor``."""
    names, stack = set(), [tensor.grad_fn]
    while stack:
        function = stack.pop()
        if function is not None:
            names.add(type(function).__name__)
            stack.extend(next_function for next_function, _ in function.next_functions)
    return names
