"""One code grade's processes: the sandboxed candidate and the trusted checker, joined by two pipes.

::

    grader ──spec (stdin)──> checker ──requests──> candidate (sandbox)
    grader <─report (stdout)─ checker <──replies── candidate

The checker (:mod:`rewards.code.checker`) runs outside the sandbox and holds
the tests and the verdict; the candidate process (:mod:`rewards.code.candidate`)
runs in the sandbox and holds only the program. The pipes are the
candidate's stdin and stdout, so any runner that can connect a program's
standard streams can host it (see :class:`rewards.sandbox.Runner`). Both
sides are this package's standard-library modules, sent as one program text
(:func:`bundle`), since neither process may import the project.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rewards.sandbox import Limits, Runner, SandboxResult, error_result

CHECKER_GRACE_S = 1.0
"""The checker waits this much longer than the run's wall-clock limit, so that the
runner's kill (and the run's own status) normally comes first."""

REPORT_WAIT_S = 10.0
"""How long the grader waits for the report once the run has ended (the checker
then only finishes the tests that remain, all of which fail at once)."""

_LOADER = """import sys, types
def _install(name, source):
    module = types.ModuleType(name)
    module.__file__ = name.replace(".", "/") + ".py"
    sys.modules[name] = module
    exec(compile(source, module.__file__, "exec"), module.__dict__)
    return module
sys.modules["rewards"] = types.ModuleType("rewards")
sys.modules["rewards.code"] = types.ModuleType("rewards.code")
"""


@dataclass(frozen=True)
class Session:
    """What a grade's run produced: the sandbox's result and the checker's
    report, or ``problem`` saying why there is no report (not the program's fault)."""

    run: SandboxResult
    report: dict[str, Any] | None
    problem: str | None = None


def run_session(runner: Runner, limits: Limits, candidate: dict[str, Any], checker: dict[str, Any]) -> Session:
    """Run the candidate (payload for :func:`rewards.code.candidate.main`) against the checker (its spec)."""
    to_candidate, from_candidate = os.pipe(), os.pipe()
    spec = {
        **checker,
        "send_fd": to_candidate[1],
        "receive_fd": from_candidate[0],
        "deadline_s": limits.timeout_s + CHECKER_GRACE_S,
    }
    try:
        process = _start_checker(spec)
    except OSError as exc:
        os.close(to_candidate[0])
        os.close(from_candidate[1])
        return Session(error_result(f"the checker could not start: {exc}"), None)
    finally:
        os.close(to_candidate[1])
        os.close(from_candidate[0])
    connect = getattr(runner, "connected", None)
    try:
        program = bundle("candidate", f"main({json.dumps(candidate)!r})")
        run = (connect(to_candidate[0], from_candidate[1]) if connect else runner).run(program, limits)
    finally:
        os.close(to_candidate[0])
        os.close(from_candidate[1])
    report, problem = _read_report(process)
    if connect is None:
        problem = f"{type(runner).__name__} has no connected(stdin, stdout): the program cannot reach the checker"
    return Session(run, report, problem)


def bundle(module: str, call: str) -> str:
    """A program that installs :mod:`rewards.code.wire` and ``rewards.code.<module>``, then calls ``call`` in the latter."""
    installs = [f"_install('rewards.code.{name}', {_source(name)!r})" for name in ("wire", module)]
    return _LOADER + "\n".join(installs[:-1]) + f"\n{installs[-1]}.{call}\n"


def _start_checker(spec: dict[str, Any]) -> subprocess.Popen:
    process = subprocess.Popen(
        [sys.executable, "-I", "-S", "-B", "-c", bundle("checker", "main()")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        pass_fds=(spec["send_fd"], spec["receive_fd"]),
    )
    stdin, process.stdin = process.stdin, None  # written here once; communicate() must not touch it
    assert stdin is not None
    try:
        with stdin:
            stdin.write(json.dumps(spec).encode())
    except OSError:
        pass  # it died at once: _read_report says so
    return process


def _read_report(process: subprocess.Popen) -> tuple[dict[str, Any] | None, str | None]:
    """The checker's report, or None and why."""
    try:
        out, err = process.communicate(timeout=REPORT_WAIT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        return None, "the checker did not finish"
    try:
        report = json.loads(out)
    except ValueError:
        tail = err.decode("utf-8", errors="replace").strip().splitlines()[-1:] or [f"exit code {process.returncode}"]
        return None, f"the checker failed: {tail[0]}"
    return report, None


@functools.cache
def _source(name: str) -> str:
    return Path(__file__).with_name(f"{name}.py").read_text(encoding="utf-8")
