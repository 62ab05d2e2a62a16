"""The ``code`` grader: run the model's program against the task's tests.

``get_grader("code", score_mode="fraction", hidden_tests=False, timeout_s=5,
memory_mb=1024, test_timeout_s=3, runner=None)``.

The reference is a dict (see :mod:`rewards.code_tests`): HumanEval's
``{prompt, entry_point, test}`` or MBPP's ``{test_list, test_setup_code,
code}``. Grading a response:

1. Extract the program (:mod:`rewards.code_extract`).
2. Run it with the tests in the sandbox (:mod:`rewards.sandbox`), through the
   harness in :mod:`rewards.code_harness`, which counts each test.
3. Score: the share of tests passed (``fraction``) or 1/0 for all/not all
   (``binary``); ``correct`` means all passed in both modes.
4. Feedback for the next turn: how many tests passed and the first failure:
   the test, what the function returned, the exception and a short
   traceback. With ``hidden_tests`` the test's text, the values it computed
   and the test-side traceback frames are left out.

A run counts only if its report, which carries a random per-run nonce,
arrives after the tests: exiting early or closing stdout cannot pass. The
nonce is a guard against accidents, not against a program that goes looking
for it (the harness runs in the same process as the candidate).

``timeout_s`` is the wall-clock limit of one run; ``test_timeout_s`` the CPU
time of one test step (so one looping test fails alone, the others still
count). A grading pool that wraps this grader needs a per-response timeout
above ``timeout_s``.
"""

from __future__ import annotations

import ast
import functools
import json
import marshal
import secrets
import textwrap
import types
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rewards.base import GradeResult, register_grader
from rewards.code_extract import Program, extract_program
from rewards.code_tests import Suite, suite_from_reference
from rewards.sandbox import Limits, LocalRunner, Runner, SandboxResult, parallel_map

SCORE_MODES = ("fraction", "binary")
NO_CODE_FEEDBACK = "Your answer contains no Python code. Put your solution in a ```python code block."
MAX_FEEDBACK_CHARS = 2500
SETUP_FILE = "tests.py"
OBSERVED = "__observed__"
_SHOWN_STDERR_CHARS = 600


@register_grader("code")
class CodeGrader:
    """Grades Python programs by running the task's tests; see the module docstring."""

    name = "code"

    def __init__(
        self,
        score_mode: str = "fraction",
        hidden_tests: bool = False,
        timeout_s: float = 5.0,
        memory_mb: int = 1024,
        test_timeout_s: float = 3.0,
        runner: Runner | None = None,
    ) -> None:
        if score_mode not in SCORE_MODES:
            raise ValueError(f"score_mode must be one of {SCORE_MODES}, not {score_mode!r}")
        if timeout_s <= 0 or test_timeout_s <= 0:
            raise ValueError("timeout_s and test_timeout_s must be positive")
        self.score_mode = score_mode
        self.hidden_tests = hidden_tests
        self.test_timeout_s = test_timeout_s
        self.limits = Limits(timeout_s=timeout_s, memory_mb=memory_mb)
        self.runner: Runner = runner or LocalRunner()

    @property
    def binary(self) -> bool:
        """Scores are 0/1 only in ``binary`` mode; ``fraction`` gives partial credit."""
        return self.score_mode == "binary"

    def grade(self, response: str, reference: Any) -> GradeResult:
        if not isinstance(response, str):
            return GradeResult.failure(f"response is {type(response).__name__}, not str")
        try:
            suite = suite_from_reference(reference)
        except ValueError as exc:
            return GradeResult.failure(f"not a code reference: {exc}")
        prompt = reference.get("prompt")
        program = extract_program(response, suite.entry_point, prompt if isinstance(prompt, str) else None)
        if program is None:
            return GradeResult.failure("no code found", feedback=NO_CODE_FEEDBACK)
        nonce = secrets.token_hex(16)
        run = self.runner.run(harness_program(program, suite, nonce, self.test_timeout_s, self.hidden_tests), self.limits)
        return self._verdict(run, read_report(run.stdout, nonce), program, suite)

    def grade_many(self, pairs: Sequence[tuple[str, Any]], workers: int | None = None) -> list[GradeResult]:
        """Grade (response, reference) pairs concurrently; results in input order."""
        return parallel_map(lambda pair: self.grade(*pair), pairs, workers)

    def _verdict(self, run: SandboxResult, report: dict | None, program: Program, suite: Suite) -> GradeResult:
        if run.status == "error":
            return GradeResult(0.0, False, program.code, "Your program could not be run. Please try again.", run.detail)
        if report is None:
            return GradeResult(0.0, False, program.code, self._no_report_feedback(run))
        total = suite.num_tests
        passed = sum(1 for ok in report["passed"][:total] if ok is True)
        correct = total > 0 and passed == total
        score = passed / total if self.score_mode == "fraction" and total else float(correct)
        feedback = f"All tests passed ({total} of {total})." if correct else self._failure_feedback(report, passed, total)
        return GradeResult(score, correct, program.code, _cap(feedback))

    def _failure_feedback(self, report: dict, passed: int, total: int) -> str:
        if report["load_error"]:
            return f"Your program failed before any test could run:\n{_error_text(report['load_error'])}"
        failure = report["failure"] or {"test": None, "source": None, "observed": None, "error": _checked_error({})}
        error = failure["error"]
        lines = [f"{passed} of {total} {'hidden tests' if self.hidden_tests else 'tests'} passed."]
        if failure["test"] is None:
            lines += ["The test set-up failed:", _error_text(error)]
        elif self.hidden_tests:
            # No test text: the type and message, and a traceback only if it has frames of the program's own.
            what = f"{error['type']}: {error['message']}" if error["message"] else error["type"]
            lines.append(f"Test {failure['test']} failed with {what}")
            if error["traceback"].startswith("Traceback"):
                lines.append(error["traceback"].rstrip("\n"))
        else:
            lines.append(f"The first failing test (test {failure['test']}):")
            lines.append(textwrap.indent((failure["source"] or "").strip("\n"), "    "))
            if failure["observed"] is not None:
                lines.append(f"Your function returned: {failure['observed']}")
            lines.append(_error_text(error))
        return "\n".join(lines)

    def _no_report_feedback(self, run: SandboxResult) -> str:
        if run.status == "timeout":
            text = (
                f"Your program did not finish within {self.limits.timeout_s:g} seconds. "
                "Look for an infinite loop or a slow algorithm."
            )
        elif run.status == "killed":
            text = f"Your program was {run.detail}."
        else:
            text = (
                f"Your program ended (exit code {run.returncode}) before the tests finished. "
                "Do not call exit(), sys.exit() or os._exit(), and do not close standard output."
            )
        if not self.hidden_tests and run.stderr.strip():
            text += "\nIts error output ended with:\n" + run.stderr[-_SHOWN_STDERR_CHARS:].rstrip("\n")
        return _cap(text)


def harness_program(program: Program, suite: Suite, nonce: str, test_cpu_s: float, hidden: bool) -> str:
    """The sandbox program: the harness, then a call to it with the run's payload."""
    steps = [(SETUP_FILE, suite.prelude, False)] if suite.prelude else []
    steps += [(f"<test {index}>", step.source, step.is_test) for index, step in enumerate(suite.steps, 1)]
    payload = {
        "nonce": nonce,
        "context": program.context,
        "solution": program.code,
        "steps": [
            [filename, source, is_test, marshal.dumps(compile_step(source, filename)).hex()]
            for filename, source, is_test in steps
        ],
        "entry_point": suite.entry_point,
        "param": suite.candidate_param,
        "observed_name": OBSERVED,
        "test_cpu_s": test_cpu_s,
        "hidden": hidden,
    }
    return f"{_harness_source()}\n\nmain({json.dumps(payload)!r})\n"


def compile_step(source: str, filename: str) -> types.CodeType:
    """Compile a test step; a plain ``assert f(x) == y`` (or ``assert f(x)``)
    also keeps ``f(x)`` in :data:`OBSERVED`, so that feedback can say what the
    function returned without calling it a second time.

    Compiled here rather than in the sandbox: the tests are trusted, the
    sandbox's interpreter is this one (same bytecode), and each run is
    spared importing ``ast``.
    """
    tree = ast.parse(source, filename)
    statement = tree.body[0] if len(tree.body) == 1 else None
    if isinstance(statement, ast.Assert):
        test = statement.test
        kept: ast.expr | None = None
        if isinstance(test, ast.Compare) and len(test.comparators) == 1:
            kept, test.left = test.left, ast.Name(OBSERVED, ast.Load())
        elif isinstance(test, ast.Call):
            kept, statement.test = test, ast.Name(OBSERVED, ast.Load())
        if kept is not None:
            tree.body.insert(0, ast.copy_location(ast.Assign([ast.Name(OBSERVED, ast.Store())], kept), statement))
            ast.fix_missing_locations(tree)
    return compile(tree, filename, "exec")


def read_report(stdout: str, nonce: str) -> dict | None:
    """The harness's report from the run's stdout, checked, or None if there is none.

    Everything in stdout is the candidate's to write (it can patch ``json``
    in the sandbox, say), so the report is rebuilt field by field with the
    types the feedback code relies on: a garbled report can fail a grade,
    never crash it.
    """
    at = stdout.rfind(nonce)
    if at < 0:
        return None
    try:
        raw = json.loads(stdout[at + len(nonce) :].split("\n", 1)[0])
    except (ValueError, RecursionError):
        return None
    if not isinstance(raw, dict) or not isinstance(raw.get("passed"), list):
        return None
    failure = raw.get("failure")
    return {
        "passed": [value is True for value in raw["passed"]],
        "load_error": _checked_error(raw.get("load_error")),
        "failure": None
        if not isinstance(failure, dict)
        else {
            "test": failure.get("test") if type(failure.get("test")) is int else None,
            "source": _text(failure.get("source")),
            "observed": _text(failure.get("observed")),
            "error": _checked_error(failure.get("error")) or {"type": "unknown error", "message": "", "traceback": ""},
        },
    }


def _checked_error(raw: Any) -> dict[str, str] | None:
    if not isinstance(raw, dict):
        return None
    return {key: _text(raw.get(key)) or "" for key in ("type", "message", "traceback")}


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


@functools.cache
def _harness_source() -> str:
    return Path(__file__).with_name("code_harness.py").read_text(encoding="utf-8")


def _error_text(error: dict[str, str]) -> str:
    """A traceback when there is one, else "Type: message"."""
    if error["traceback"]:
        return error["traceback"].rstrip("\n")
    return f"{error['type']}: {error['message']}" if error["message"] else error["type"]


def _cap(text: str) -> str:
    return text if len(text) <= MAX_FEEDBACK_CHARS else text[: MAX_FEEDBACK_CHARS - 20] + "\n[... truncated ...]"
