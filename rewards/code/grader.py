"""The ``code`` grader: run the model's program against the task's tests.

``get_grader("code", score_mode="fraction", hidden_tests=False, timeout_s=5,
memory_mb=1024, test_timeout_s=3, runner=None)``.

The reference is a dict (see :mod:`rewards.code.suite`): HumanEval's
``{prompt, entry_point, test}`` or MBPP's ``{test_list, test_setup_code,
code}``. Grading a response:

1. Extract the program (:mod:`rewards.code.extract`).
2. Run it in the sandbox (:mod:`rewards.sandbox`) as a server of calls of the
   task's function (:mod:`rewards.code.candidate`), while the task's tests
   run in a separate, trusted checker process (:mod:`rewards.code.checker`)
   where the function is a proxy: arguments and results cross as plain data
   (:mod:`rewards.code.wire`), so the program can neither see the tests nor
   reach the verdict (:mod:`rewards.code.session`).
3. Score: the share of tests passed (``fraction``) or 1/0 for all/not all
   (``binary``); ``correct`` means all passed in both modes.
4. Feedback for the next turn: how many tests passed and the first failure:
   the test, what the function returned, the exception and a short
   traceback. With ``hidden_tests`` the test's text, the values it computed
   and the test-side traceback frames are left out.

What can fail a call besides a wrong answer: a result that is not plain data
(None, bool, int, float, str, list, tuple, dict, set, frozenset; an object
with its own ``__eq__`` is not), more than 4 MiB of it, more than
``test_timeout_s`` of CPU time, the program ending, or anything on the
channel that is not a reply. The tests may only use the task's function (the
prompt's helpers run on the trusted side) and pass it plain data; changes a
call makes to its arguments stay in the sandbox.

Answer key (``GradeResult.answer_key``, what majority votes compare): the
program's behaviour on the inputs the task shows (:mod:`rewards.code.examples`:
the prompt's example calls, else the first test's calls), computed in the same
run after the tests: the first 16 hex digits of the SHA-256 of the JSON list
of outcomes, one per input: the returned value in canonical form (dicts and
sets sorted; 1, 1.0 and True differ) or the type name of the exception.
Programs that behave alike on those inputs get equal keys however they are
written. The key is None when there is nothing to vote for: no example
inputs, a program that does not load, a run cut short (timeout, crash,
broken channel) or one that raised on every input.

``timeout_s`` is the wall-clock limit of one run; ``test_timeout_s`` the CPU
time of one call (so one looping test fails, and ends the run, without
using the whole limit). A grading pool that wraps this grader needs a
per-response timeout above ``timeout_s``.
"""

from __future__ import annotations

import textwrap
from typing import Any

from rewards.base import ExactKeys, GradeResult, Placement, never_raises, register_grader
from rewards.code.examples import example_calls
from rewards.code.extract import Program, extract_program, prompt_code
from rewards.code.session import Session, run_session
from rewards.code.suite import Suite, suite_from_reference
from rewards.sandbox import Limits, LocalRunner, Runner, SandboxResult

SCORE_MODES = ("fraction", "binary")
NO_CODE_FEEDBACK = "Your answer contains no Python code. Put your solution in a ```python code block."
MAX_FEEDBACK_CHARS = 2500
SETUP_FILE = "tests.py"
PROMPT_FILE = "prompt.py"
_SHOWN_STDERR_CHARS = 600


@register_grader("code")
class CodeGrader(ExactKeys):
    """Grades Python programs by running the task's tests; see the module docstring."""

    name = "code"
    placement = Placement.POOL  # a run takes a tenth of a second or more: one response per pool job

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

    @never_raises
    def grade(self, response: str, reference: Any) -> GradeResult:
        if not isinstance(response, str):
            return GradeResult.failure(f"response is {type(response).__name__}, not str")
        try:
            suite = suite_from_reference(reference)
        except ValueError as exc:
            return GradeResult.failure(f"not a code reference: {exc}")
        if suite.entry_point is None:
            return GradeResult.failure("not a code reference: it names no function for its tests to call")
        prompt = prompt_code(reference.get("prompt"))
        program = extract_program(response, suite.entry_point, prompt or None)
        if program is None:
            # No program is a wrong answer (nothing to run), not a grading failure.
            return GradeResult(score=0.0, correct=False, parsed=None, feedback=NO_CODE_FEEDBACK)
        candidate = {
            "context": program.context,
            "solution": program.code,
            "entry_point": suite.entry_point,
            "cpu_s": self.test_timeout_s,
        }
        session = run_session(self.runner, self.limits, candidate, self._checker_spec(suite, prompt))
        return self._verdict(session, program, suite)

    def _checker_spec(self, suite: Suite, prompt: str) -> dict[str, Any]:
        """What the checker runs: the prompt's code, the test module, then the steps (see :mod:`rewards.code.checker`)."""
        steps = [(PROMPT_FILE, prompt, False)] if prompt else []
        steps += [(SETUP_FILE, suite.prelude, False)] if suite.prelude else []
        steps += [(f"<test {index}>", step.source, step.is_test) for index, step in enumerate(suite.steps, 1)]
        return {
            "steps": steps,
            "entry_point": suite.entry_point,
            "candidate_names": [name for name in (suite.entry_point, suite.candidate_param) if name],
            "hidden": self.hidden_tests,
            "cpu_s": self.test_timeout_s,
            "examples": example_calls(prompt, suite),
        }

    def _verdict(self, session: Session, program: Program, suite: Suite) -> GradeResult:
        run, report = session.run, session.report
        if run.status == "error":
            return GradeResult(0.0, False, program.code, "Your program could not be run. Please try again.", run.detail)
        if report is None or session.problem is not None:
            return GradeResult(
                0.0, False, program.code, "Your answer could not be graded. Please try again.", session.problem
            )
        total = suite.num_tests
        passed = sum(1 for ok in report["passed"][:total] if ok is True)
        correct = total > 0 and passed == total
        score = passed / total if self.score_mode == "fraction" and total else float(correct)
        if correct:
            feedback = f"All tests passed ({total} of {total})."
        elif report["load_error"]:
            feedback = f"Your program failed before any test could run:\n{_error_text(report['load_error'])}"
        elif report["ended"] in ("ProgramEnded", "Timeout") or not report["started"]:
            feedback = self._ended_feedback(run, report, passed, total)
        else:
            feedback = self._failure_feedback(report, passed, total)
        return GradeResult(score, correct, program.code, _cap(feedback), answer_key=report["answer_key"])

    def _tests_passed(self, passed: int, total: int) -> str:
        return f"{passed} of {total} {'hidden tests' if self.hidden_tests else 'tests'} passed."

    def _failure_feedback(self, report: dict, passed: int, total: int) -> str:
        failure = report["failure"]
        error = failure["error"]
        lines = [self._tests_passed(passed, total)]
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

    def _ended_feedback(self, run: SandboxResult, report: dict, passed: int, total: int) -> str:
        """The run ended before the tests did: how, and how far it got."""
        ended = report["ended"]
        if ended == "Timeout" or run.status == "timeout":
            text = (
                f"Your program did not finish within {self.limits.timeout_s:g} seconds. "
                "Look for an infinite loop or a slow algorithm."
            )
        elif ended != "ProgramEnded":
            text = (
                "Your program wrote something to the grader's channel that is not an answer, so it could not be tested."
            )
        elif run.status == "killed":
            text = f"Your program was {run.detail}."
        else:
            text = (
                f"Your program ended (exit code {run.returncode}) before the tests finished. "
                "Do not call exit(), sys.exit() or os._exit(), and do not close standard input or output."
            )
        if report["started"]:
            text = f"{self._tests_passed(passed, total)} {text}"
        if not self.hidden_tests and run.stderr.strip():
            text += "\nIts error output ended with:\n" + run.stderr[-_SHOWN_STDERR_CHARS:].rstrip("\n")
        return text


def _error_text(error: dict[str, str]) -> str:
    """A traceback when there is one, else "Type: message"."""
    if error["traceback"]:
        return error["traceback"].rstrip("\n")
    return f"{error['type']}: {error['message']}" if error["message"] else error["type"]


def _cap(text: str) -> str:
    return text if len(text) <= MAX_FEEDBACK_CHARS else text[: MAX_FEEDBACK_CHARS - 20] + "\n[... truncated ...]"
