"""The ``code`` grader: run the model's program against the task's tests.

``get_grader("code", score_mode="fraction", hidden_tests=False, timeout_s=10,
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

import functools
import json
import secrets
import textwrap
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
_SHOWN_STDERR_CHARS = 600


@register_grader("code")
class CodeGrader:
    """Grades Python programs by running the task's tests; see the module docstring."""

    name = "code"

    def __init__(
        self,
        score_mode: str = "fraction",
        hidden_tests: bool = False,
        timeout_s: float = 10.0,
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
        feedback = f"All {total} tests passed." if correct else self._failure_feedback(report, passed, total)
        return GradeResult(score, correct, program.code, _cap(feedback))

    def _failure_feedback(self, report: dict, passed: int, total: int) -> str:
        if report.get("load_error"):
            return f"Your program failed before any test could run:\n{_error_text(report['load_error'])}"
        failure = report.get("failure") or {}
        error = failure.get("error") or {"type": "unknown error", "message": "", "traceback": ""}
        lines = [f"{passed} of {total} {'hidden tests' if self.hidden_tests else 'tests'} passed."]
        if failure.get("test") is None:
            lines += ["The test set-up failed:", _error_text(error)]
        elif self.hidden_tests:
            # No test text: the type and message, and a traceback only if it has frames of the program's own.
            lines.append(f"Test {failure['test']} failed with " + (f"{error['type']}: {error['message']}" if error["message"] else error["type"]))
            if error["traceback"].startswith("Traceback"):
                lines.append(error["traceback"].rstrip("\n"))
        else:
            lines.append(f"The first failing test (test {failure['test']}):")
            lines.append(textwrap.indent((failure.get("source") or "").strip("\n"), "    "))
            if failure.get("observed") is not None:
                lines.append(f"Your function returned: {failure['observed']}")
            lines.append(_error_text(error))
        return "\n".join(lines)

    def _no_report_feedback(self, run: SandboxResult) -> str:
        if run.status == "timeout":
            text = f"Your program did not finish within {self.limits.timeout_s:g} seconds. Look for an infinite loop or a slow algorithm."
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
    payload = {
        "nonce": nonce,
        "context": program.context,
        "solution": program.code,
        "prelude": suite.prelude,
        "steps": [[step.source, step.is_test] for step in suite.steps],
        "entry_point": suite.entry_point,
        "param": suite.candidate_param,
        "test_cpu_s": test_cpu_s,
        "hidden": hidden,
    }
    return f"{_harness_source()}\n\nmain({json.dumps(payload)!r})\n"


def read_report(stdout: str, nonce: str) -> dict | None:
    """The harness's report from the run's stdout, or None if there is none."""
    at = stdout.rfind(nonce)
    if at < 0:
        return None
    try:
        report = json.loads(stdout[at + len(nonce) :].split("\n", 1)[0])
    except ValueError:
        return None
    return report if isinstance(report, dict) and isinstance(report.get("passed"), list) else None


@functools.cache
def _harness_source() -> str:
    return Path(__file__).with_name("code_harness.py").read_text(encoding="utf-8")


def _error_text(error: dict) -> str:
    """A traceback when there is one, else "Type: message"."""
    if error.get("traceback"):
        return str(error["traceback"]).rstrip("\n")
    return f"{error['type']}: {error['message']}" if error.get("message") else str(error["type"])


def _cap(text: str) -> str:
    return text if len(text) <= MAX_FEEDBACK_CHARS else text[: MAX_FEEDBACK_CHARS - 20] + "\n[... truncated ...]"
