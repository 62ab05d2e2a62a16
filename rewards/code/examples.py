"""The inputs a code task shows, on which the answer key observes each program.

A majority vote over code answers must compare what programs *do*, not how
they are written. The inputs are the calls of the task's function with
literal arguments that the prompt itself writes (HumanEval's docstring
examples ``>>> f([1, 2], 3)`` and prose like ``f("ab") ➞ 2``); when the
prompt shows none (MBPP rows, prompts without examples), the calls in the
first test. Only literals count: an example built from a variable cannot be
replayed.
"""

from __future__ import annotations

import ast
import re
from typing import Any

from rewards import python_ast
from rewards.code.suite import Suite
from rewards.code.wire import WireError, encode

MAX_EXAMPLES = 10
_MAX_CALL_CHARS = 2000


def example_calls(prompt: str, suite: Suite) -> list[Any]:
    """Distinct example calls, each encoded (:mod:`rewards.code.wire`) as ``[args, kwargs]``."""
    names = {name for name in (suite.entry_point, suite.candidate_param) if name}
    calls = literal_calls(prompt, names)
    if not calls:
        first_test = next((step.source for step in suite.steps if step.is_test), "")
        calls = literal_calls(first_test, names)
    return calls[:MAX_EXAMPLES]


def literal_calls(text: str, names: set[str]) -> list[Any]:
    """The distinct calls of any of ``names`` in ``text`` whose arguments are all literals, encoded."""
    if not names:
        return []
    pattern = re.compile(r"\b(?:" + "|".join(map(re.escape, sorted(names))) + r")\(")
    found: list[Any] = []
    for match in pattern.finditer(text):
        call = _call_at(text, match.start())
        if call is not None and call not in found:
            found.append(call)
    return found


def _call_at(text: str, start: int) -> Any:
    """The call that starts at ``start``: the shortest text up to a ``)`` that parses (None if it is not literal)."""
    end = text.find(")", start)
    while 0 <= end < start + _MAX_CALL_CHARS:
        try:
            node = python_ast.parse(text[start : end + 1], mode="eval").body
        except (SyntaxError, ValueError):
            end = text.find(")", end + 1)
            continue
        return _encoded_arguments(node)
    return None


def _encoded_arguments(node: ast.expr) -> Any:
    if not isinstance(node, ast.Call) or any(keyword.arg is None for keyword in node.keywords):
        return None
    try:
        args = [ast.literal_eval(argument) for argument in node.args]
        kwargs = {keyword.arg: ast.literal_eval(keyword.value) for keyword in node.keywords}
        return encode([args, kwargs])
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError, WireError):
        return None  # a name, a call, a starred argument, or a literal that is not plain data
