"""``ast.parse`` behind one lock, for graders that parse in several threads at once.

CPython 3.11 keeps the AST validator's recursion depth in interpreter-wide
state, so two threads parsing at the same time can fail with "SystemError:
AST constructor recursion depth mismatch" (seen in this project's test run
on 3.11.7, when the code grader graded in threads). Parsing is fast, so
serialising it costs nothing measurable, and a grader must not raise.
"""

from __future__ import annotations

import ast
import threading
from typing import Literal, overload

_LOCK = threading.Lock()


@overload
def parse(source: str, mode: Literal["exec"] = "exec") -> ast.Module: ...


@overload
def parse(source: str, mode: Literal["eval"]) -> ast.Expression: ...


def parse(source: str, mode: Literal["exec", "eval"] = "exec") -> ast.Module | ast.Expression:
    """``ast.parse(source, mode=mode)``, one thread at a time."""
    with _LOCK:
        return ast.parse(source, mode="eval") if mode == "eval" else ast.parse(source)
