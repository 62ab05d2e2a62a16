"""The test harness that runs inside the sandbox, next to the candidate program.

:mod:`rewards.code` sends this file's text as the sandbox program, followed
by a call to :func:`main` with a JSON payload. Standard library only: the
sandbox starts Python without site-packages and without this project.

Steps: load the prompt's code and the candidate into a module named
``solution`` (so an ``if __name__ == "__main__":`` demo does not run), then
run the test steps one at a time in a copy of its namespace, each under a
CPU-time alarm, recording pass/fail per test and the first failure in full.
A failed set-up step or a timed-out step ends the run: the tests after it
count as failed.
The report goes out as one line, after the last step: the run's random
nonce, then JSON. It is written to a duplicate of stdout taken before the
candidate loads, so a candidate that closes ``sys.stdout`` or fd 1 cannot
stop an honest report, and one that exits early (``sys.exit(0)``,
``os._exit(0)``) leaves no report, which the grader reads as a failure.
After the report the process ends with ``os._exit`` so that no ``atexit``
hook of the candidate runs after it.

Hidden tests: the report then carries no test text, no values computed by a
test, and traceback frames from the candidate's own code only.
"""

from __future__ import annotations

import ast
import json
import linecache
import os
import signal
import sys
import traceback
import types
from typing import Any, Callable

SOLUTION_FILE = "solution.py"
CONTEXT_FILE = "prompt.py"
SETUP_FILE = "tests.py"
MAX_TRACEBACK_CHARS = 1500
MAX_MESSAGE_CHARS = 300
MAX_REPR_CHARS = 200
MAX_FRAMES = 6
OBSERVED = "__observed__"


class TestTimeout(BaseException):
    """The CPU-time alarm of one step. A BaseException so that the
    candidate's ``except Exception`` does not swallow it."""


def _on_alarm(signum: int, frame: Any) -> None:
    raise TestTimeout()


def limited(cpu_s: float, action: Callable[[], Any]) -> Any:
    """Run ``action`` with at most ``cpu_s`` seconds of CPU time (then TestTimeout)."""
    signal.setitimer(signal.ITIMER_PROF, cpu_s)
    try:
        return action()
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0)


def register_lines(source: str, filename: str) -> None:
    """Make tracebacks show the lines of code compiled under ``filename``."""
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)


def compile_as(source: str, filename: str) -> types.CodeType:
    register_lines(source, filename)
    return compile(source, filename, "exec")


def describe(exc: BaseException, shown_files: set[str], hidden: bool, cpu_s: float) -> dict[str, str]:
    """Type, message and a short traceback restricted to ``shown_files``."""
    if isinstance(exc, TestTimeout):
        return {"type": "Timeout", "message": f"used more than {cpu_s:g}s of CPU time", "traceback": ""}
    message = "" if hidden and isinstance(exc, AssertionError) else str(exc)[:MAX_MESSAGE_CHARS]
    frames = [frame for frame in traceback.extract_tb(exc.__traceback__) if frame.filename in shown_files]
    lines = traceback.format_exception_only(type(exc), exc)
    if hidden and isinstance(exc, AssertionError):
        lines = ["AssertionError\n"]
    if frames:
        lines = ["Traceback (most recent call last):\n", *traceback.format_list(frames[-MAX_FRAMES:]), *lines]
    text = "".join(lines)
    return {"type": type(exc).__name__, "message": message, "traceback": text[-MAX_TRACEBACK_CHARS:]}


def compile_step(source: str, filename: str) -> types.CodeType:
    """Compile a test step so that a plain ``assert f(x) == y`` (or ``assert
    f(x)``) keeps ``f(x)`` in :data:`OBSERVED`, for "your function returned"
    feedback without calling the candidate a second time."""
    register_lines(source, filename)
    tree = ast.parse(source, filename)
    statement = tree.body[0] if len(tree.body) == 1 else None
    if isinstance(statement, ast.Assert):
        test = statement.test
        if isinstance(test, ast.Compare) and len(test.comparators) == 1:
            observed, test.left = test.left, ast.Name(OBSERVED, ast.Load())
        elif isinstance(test, ast.Call):
            observed, statement.test = test, ast.Name(OBSERVED, ast.Load())
        else:
            observed = None
        if observed is not None:
            keep = ast.Assign([ast.Name(OBSERVED, ast.Store())], observed)
            tree.body.insert(0, ast.copy_location(keep, statement))
            ast.fix_missing_locations(tree)
    return compile(tree, filename, "exec")


def observed_repr(namespace: dict[str, Any], cpu_s: float) -> str | None:
    """The repr of the value the failed assert checked, if it kept one."""
    if OBSERVED not in namespace:
        return None
    try:
        return limited(cpu_s, lambda: repr(namespace[OBSERVED])[:MAX_REPR_CHARS])
    except BaseException:  # noqa: BLE001 - a broken __repr__ just leaves the value out
        return None


def run_tests(spec: dict[str, Any]) -> dict[str, Any]:
    """Load the candidate, run every step, return the report."""
    cpu_s, hidden, entry = spec["test_cpu_s"], spec["hidden"], spec["entry_point"]
    steps = [(spec["prelude"], False, SETUP_FILE)] if spec["prelude"] else []
    steps += [(source, is_test, f"<test {index}>") for index, (source, is_test) in enumerate(spec["steps"], 1)]
    num_tests = sum(is_test for _, is_test, _ in steps)
    own_files = {SOLUTION_FILE, CONTEXT_FILE}
    shown = own_files if hidden else own_files | {SETUP_FILE} | {name for _, _, name in steps}
    report: dict[str, Any] = {"passed": [], "load_error": None, "failure": None}

    module = types.ModuleType("solution")
    sys.modules["solution"] = module  # dataclasses and pickle look their module up there
    namespace = module.__dict__
    missing = object()
    try:
        if spec["context"]:
            context = compile_as(spec["context"], CONTEXT_FILE)
            limited(cpu_s, lambda: exec(context, namespace))
        before = namespace.get(entry, missing) if entry else missing
        solution = compile_as(spec["solution"], SOLUTION_FILE)
        limited(cpu_s, lambda: exec(solution, namespace))
        if entry and namespace.get(entry, missing) in (missing, before):
            raise NameError(f"the program does not define a function named {entry!r}")
    except BaseException as exc:  # noqa: BLE001 - whatever the candidate does is a failed load
        report["load_error"] = describe(exc, own_files, hidden, cpu_s)
        report["passed"] = [False] * num_tests
        return report

    # A copy: names the tests define must not change what the candidate sees.
    test_namespace = dict(namespace)
    if spec["param"]:
        test_namespace[spec["param"]] = namespace[entry]
    aborted = False
    test_number = 0
    for source, is_test, filename in steps:
        test_number += is_test
        passed = False
        if not aborted:
            test_namespace.pop(OBSERVED, None)
            try:
                code = compile_step(source, filename)
                limited(cpu_s, lambda: exec(code, test_namespace))
                passed = True
            except BaseException as exc:  # noqa: BLE001 - a failing step, whatever it raised
                if report["failure"] is None:
                    report["failure"] = {
                        "test": test_number if is_test else None,
                        "source": None if hidden else source,
                        "error": describe(exc, shown, hidden, cpu_s),
                        "observed": observed_repr(test_namespace, cpu_s)
                        if isinstance(exc, AssertionError) and not hidden
                        else None,
                    }
                # After a failed set-up the tests cannot run; after a timeout
                # they would most likely time out too, each costing the full limit.
                aborted = not is_test or isinstance(exc, TestTimeout)
        if is_test:
            report["passed"].append(passed)
    return report


def main(payload: str) -> None:
    spec = json.loads(payload)
    report_stream = os.fdopen(os.dup(1), "w", encoding="utf-8")
    signal.signal(signal.SIGPROF, _on_alarm)
    report = run_tests(spec)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:  # noqa: BLE001 - the candidate may have closed or replaced it
            pass
    report_stream.write(spec["nonce"] + json.dumps(report) + "\n")
    report_stream.flush()
    os._exit(0)
