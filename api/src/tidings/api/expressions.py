"""CEL programs: the one place Tidings loads the `cel` binding
(common-expression-language), on the first expression it compiles.

The binding's package also imports its interactive command-line tool (typer,
rich, prompt_toolkit, pygments): about a quarter of a second of CPU, more than
the rest of a dispatcher's start. Tidings never runs that tool, so an empty
module stands in for it (hack/bench_startup.py measures the difference)."""

from __future__ import annotations

import functools
import sys
import types
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import cel


def compile_expression(expression: str) -> cel.Program:
    """The compiled program; ValueError when the expression does not parse."""
    program: cel.Program = _binding().compile(expression)
    return program


@functools.cache
def _binding() -> types.ModuleType:
    if "cel" not in sys.modules:
        sys.modules.setdefault("cel.cli", types.ModuleType("cel.cli", "not loaded by Tidings"))
    import cel

    return cel
