"""``torch.autograd.Function`` with an ``apply`` that costs what autograd's C++ ``apply`` costs."""

from __future__ import annotations

import inspect
from typing import Any

import torch

try:
    from torch._functorch.utils import unwrap_dead_wrappers
except ImportError:  # a private API: without it, the standard apply
    unwrap_dead_wrappers = None

__all__ = ["Function"]

# what ``torch.autograd.Function.apply`` tests before it calls autograd's C++ apply (private too)
_transforms_active = getattr(torch._C, "_are_functorch_transforms_active", None)


class Function(torch.autograd.Function):
    """Base of the library's autograd Functions: ``apply`` skips binding the arguments when it can.

    A Function that defines ``setup_context`` (as ``torch.func`` requires) has its arguments bound
    to the signature of its ``forward`` with :func:`inspect.signature` at every
    ``torch.autograd.Function.apply``, to fill in default values: about 40 us a call on a CPU, more
    than the forward of a 64 x 64 layer at batch 128 (its ``F.linear`` takes 30 us). When every
    argument of ``forward`` is given positionally there is nothing to fill in, so outside ``torch.func``
    transforms this ``apply`` calls autograd's C++ ``apply`` directly, as the standard one then does.
    Otherwise (keywords, omitted defaults, transforms) it is the standard ``apply``. ``torch.compile``
    never runs it: dynamo traces ``apply`` of any Function itself.

    Example:
        >>> class Double(Function):
        ...     @staticmethod
        ...     def forward(input):
        ...         return 2 * input
        ...
        ...     @staticmethod
        ...     def setup_context(ctx, inputs, output):
        ...         pass
        ...
        ...     @staticmethod
        ...     def backward(ctx, grad):
        ...         return 2 * grad
        >>> x = torch.ones(2, requires_grad=True)
        >>> Double.apply(x).sum().backward()
        >>> x.grad
        tensor([2., 2.])
    """

    _positional_count: int | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        parameters = inspect.signature(cls.forward).parameters.values()
        kinds = {inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD}
        # a forward with *args or keyword-only parameters always takes the standard apply
        cls._positional_count = (
            len(parameters) if all(parameter.kind in kinds for parameter in parameters) else None
        )

    @classmethod
    def apply(cls, *args: Any, **kwargs: Any) -> Any:
        if (
            kwargs
            or len(args) != cls._positional_count
            or _transforms_active is None
            or unwrap_dead_wrappers is None
            or _transforms_active()
        ):
            return super().apply(*args, **kwargs)
        # the C++ apply, next in the method resolution order after torch.autograd.Function
        return super(torch.autograd.Function, cls).apply(*unwrap_dead_wrappers(args))
