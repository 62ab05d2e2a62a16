"""The test harness that runs inside the sandbox, next to the candidate program.

:mod:`rewards.code` sends this file's text as the sandbox program, followed
by a call to :func:`main` with a JSON payload. Standard library only (the
sandbox starts Python without site-packages and without this project), and
few imports: they are paid on every run. The test steps arrive compiled
(``marshal``) by the grader, which also keeps ``ast`` out of here.

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

import json
import linecache
import marshal
import os
import signal
import sys
import traceback
import types

TYPE_CHECKING = False
if TYPE_CHECKING:  # importing typing would cost every run a few milliseconds
    from collections.abc import Callable
    from typing import Any

SOLUTION_FILE = "solution.py"
CONTEXT_FILE = "prompt.py"
MAX_TRACEBACK_CHARS = 1500
MAX_MESSAGE_CHARS = 300
MAX_REPR_CHARS = 200
MAX_FRAMES = 6


class TestTimeout(BaseException):
    """The CPU-time alarm of one step. A BaseException so that the
    candidate's ``except Exception`` does not swallow it."""


def _on_alarm(signum: int, frame: object) -> None:
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
    try:
        message = "" if hidden and isinstance(exc, AssertionError) else str(exc)[:MAX_MESSAGE_CHARS]
        frames = [frame for frame in traceback.extract_tb(exc.__traceback__) if frame.filename in shown_files]
        if hidden and isinstance(exc, AssertionError):
            lines = ["AssertionError\n"]
        else:
            lines = traceback.format_exception_only(type(exc), exc)
        if frames:
            lines = ["Traceback (most recent call last):\n", *traceback.format_list(frames[-MAX_FRAMES:]), *lines]
    except BaseException:  # noqa: BLE001 - the candidate's own exception class may not even print
        return {"type": type(exc).__name__, "message": "", "traceback": ""}
    return {"type": type(exc).__name__, "message": message, "traceback": "".join(lines)[-MAX_TRACEBACK_CHARS:]}


def observed_repr(namespace: dict[str, Any], name: str, cpu_s: float) -> str | None:
    """The repr of the value a failed assert checked, if its step kept it in ``name``."""
    if name not in namespace:
        return None
    try:
        return limited(cpu_s, lambda: repr(namespace[name])[:MAX_REPR_CHARS])
    except BaseException:  # noqa: BLE001 - a broken __repr__ just leaves the value out
        return None


def run_tests(spec: dict[str, Any]) -> dict[str, Any]:
    """Load the candidate, run every step, return the report."""
    cpu_s, hidden, entry, observed = spec["test_cpu_s"], spec["hidden"], spec["entry_point"], spec["observed_name"]
    steps = spec["steps"]  # [filename, source, is_test, marshalled code]: compiled by the grader
    num_tests = sum(is_test for _, _, is_test, _ in steps)
    own_files = {SOLUTION_FILE, CONTEXT_FILE}
    shown = own_files if hidden else own_files | {filename for filename, _, _, _ in steps}
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
    for filename, source, is_test, code in steps:
        test_number += is_test
        passed = False
        if not aborted:
            test_namespace.pop(observed, None)
            register_lines(source, filename)
            try:
                step = marshal.loads(bytes.fromhex(code))
                limited(cpu_s, lambda: exec(step, test_namespace))
                passed = True
            except BaseException as exc:  # noqa: BLE001 - a failing step, whatever it raised
                if report["failure"] is None:
                    report["failure"] = {
                        "test": test_number if is_test else None,
                        "source": None if hidden else source,
                        "error": describe(exc, shown, hidden, cpu_s),
                        "observed": observed_repr(test_namespace, observed, cpu_s)
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
