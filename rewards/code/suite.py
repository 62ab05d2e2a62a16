"""Turning a code task's reference into a list of individually counted tests.

Two reference shapes are understood:

- HumanEval: ``{"test": "def check(candidate): assert ...", "entry_point": "f"}``.
  The body of ``check`` is split with ``ast`` into its statements; each one
  that contains an ``assert`` is a test, the others (imports, helper
  variables) are set-up steps run in order in the same namespace. That is
  what makes "share of tests passed" meaningful for a ``check`` with 20
  asserts. When the split is not possible (no ``check``, no top-level asserts,
  a ``return`` inside), the whole ``check(f)`` call is one test. Test code
  that does not compile makes the reference invalid (ValueError).
- MBPP: ``{"test_list": ["assert f(1) == 2", ...], "test_setup_code": ...}``
  (``tests`` is accepted for ``test_list``); each string is one test. The
  entry point, when not given, is the function that the reference solution
  (``code``) defines and the tests call.

Running the steps in order in one namespace keeps the pass/fail verdict
equal to running ``check`` whole: the steps up to the first failure execute
exactly as ``check`` would execute them.
"""

from __future__ import annotations

import ast
import builtins
import textwrap
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from rewards import python_ast


@dataclass(frozen=True)
class Step:
    """One statement of a test suite; ``is_test`` steps are counted, the others are set-up."""

    source: str
    is_test: bool


@dataclass(frozen=True)
class Suite:
    """What the sandbox harness runs after loading the candidate program.

    ``prelude`` runs first (the HumanEval test module, MBPP's set-up code),
    then the steps. ``candidate_param``, when set, is bound to the entry
    point in the steps' namespace (it is ``check``'s parameter name).
    """

    entry_point: str | None
    prelude: str
    steps: tuple[Step, ...]
    candidate_param: str | None = None

    @property
    def num_tests(self) -> int:
        return sum(step.is_test for step in self.steps)


def suite_from_reference(reference: Any) -> Suite:
    """Build the suite for a code reference; ValueError if it is not one."""
    if not isinstance(reference, Mapping):
        raise ValueError(f"a code reference is a mapping, not {type(reference).__name__}")
    entry_point = reference.get("entry_point") or None
    if isinstance(reference.get("test"), str):
        if not entry_point:
            raise ValueError("a HumanEval-style reference needs an entry_point")
        return humaneval_suite(reference["test"], entry_point)
    tests = reference.get("test_list", reference.get("tests"))
    if isinstance(tests, list) and tests and all(isinstance(test, str) for test in tests):
        setup = reference.get("test_setup_code") or ""
        for source in [setup, *tests]:
            _check_syntax(source)
        entry_point = entry_point or infer_entry_point(reference.get("code") or "", tests)
        return Suite(entry_point, setup, tuple(Step(test, True) for test in tests))
    raise ValueError("a code reference needs 'test' (a check function) or a non-empty 'test_list' of strings")


def humaneval_suite(test_source: str, entry_point: str) -> Suite:
    """Split ``check(candidate)`` into steps, or fall back to one all-or-nothing test."""
    whole = Suite(entry_point, test_source, (Step(f"check({entry_point})", True),))
    module = _check_syntax(test_source)
    check = next((node for node in module.body if isinstance(node, ast.FunctionDef) and node.name == "check"), None)
    if check is None or len(check.args.args) != 1 or _has_function_control(check):
        return whole
    steps = tuple(
        Step(_statement_source(test_source, statement), _contains_assert(statement))
        for statement in check.body
        if not _is_docstring(statement)
    )
    if not any(step.is_test for step in steps):
        return whole
    return Suite(entry_point, test_source, steps, check.args.args[0].arg)


def infer_entry_point(code: str, tests: list[str]) -> str | None:
    """The function the tests call that ``code`` defines (else the first one called)."""
    try:
        defined = {
            node.name
            for node in python_ast.parse(code).body
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        }
    except SyntaxError:
        defined = set()
    called: list[str] = []
    for test in tests:
        try:
            tree = python_ast.parse(test)
        except SyntaxError:
            continue
        calls = sorted(
            (node for node in ast.walk(tree) if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)),
            key=lambda node: (node.lineno, node.col_offset),
        )
        called += [call.func.id for call in calls]  # type: ignore[attr-defined]
    return next((name for name in called if name in defined), None) or next(
        (name for name in called if not hasattr(builtins, name)), None
    )


def _check_syntax(source: str) -> ast.Module:
    """Parse test code; a reference whose tests do not compile is a ValueError."""
    try:
        return python_ast.parse(source)
    except (SyntaxError, ValueError, RecursionError) as exc:
        raise ValueError(f"test code does not compile: {exc}") from None


def _statement_source(source: str, statement: ast.stmt) -> str:
    """The statement's own text, dedented (so that it runs at module level)."""
    segment = ast.get_source_segment(source, statement, padded=True)
    return textwrap.dedent(segment) if segment is not None else ast.unparse(statement)


def _contains_assert(statement: ast.stmt) -> bool:
    return any(isinstance(node, ast.Assert) for node in ast.walk(statement))


def _is_docstring(statement: ast.stmt) -> bool:
    value = statement.value if isinstance(statement, ast.Expr) else None
    return isinstance(value, ast.Constant) and isinstance(value.value, str)


def _has_function_control(check: ast.FunctionDef) -> bool:
    """``return``/``yield``/``global``/``nonlocal`` in ``check`` itself mean nothing at module level."""
    pending: list[ast.AST] = list(check.body)
    while pending:
        node = pending.pop()
        if isinstance(node, (ast.Return, ast.Yield, ast.YieldFrom, ast.Global, ast.Nonlocal, ast.Await)):
            return True
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
            pending.extend(ast.iter_child_nodes(node))
    return False
