"""Griffe extension: render the project's ``Example:`` docstring sections as Google ``Examples:``.

The code base writes one runnable example per docstring under ``Example:`` (singular). Griffe's
Google parser only treats ``Examples:`` as a section of doctests; a singular ``Example:`` becomes an
admonition whose ``>>>`` lines are read as Markdown (``x[0][0]`` turns into a reference link).
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_SINGULAR = re.compile(r"^(?P<indent>[ \t]*)Example:[ \t]*$", re.MULTILINE)


class ExampleSections(griffe.Extension):
    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = _SINGULAR.sub(r"\g<indent>Examples:", obj.docstring.value)
