"""The candidate's side of a code grade: runs in the sandbox, with the candidate program.

:mod:`rewards.code.session` sends this file (bundled with :mod:`rewards.code.wire`)
as the sandbox program, followed by a call to :func:`main` with a JSON
payload that holds the program and nothing else: no tests, no verdict, no
secret. Standard library only, few imports: they are paid on every run.

It loads the prompt's code and the candidate into a module named
``solution`` (so an ``if __name__ == "__main__":`` demo does not run), says
``ready`` (or sends the load error), then serves calls of the task's
function: each request is one JSON line ``{"args": ..., "kwargs": ...}`` of
plain data from the trusted checker (:mod:`rewards.code.checker`), each
reply one line: ``{"value": ...}``, ``{"raised": ...}`` (type, message, the
traceback frames of the program's own files), ``{"timeout": true}`` (the
call used more than its CPU time) or ``{"unsendable": reason}`` (the result
is not plain data, or too large). At the end of the requests it exits.

The channel is this process's stdin and stdout as the sandbox starts it.
Before the candidate loads, both are moved to private descriptors, stdin is
pointed at ``/dev/null`` and stdout at stderr: the program's prints land in
the run's error output, and closing fd 0 or 1 cannot touch the channel.
Nothing here has to be trustworthy: a program that patches this code, writes
to the channel or exits only sends its own answers, which the checker
decodes as plain data or fails.
"""

from __future__ import annotations

import linecache
import os
import signal
import sys
import traceback
import types

from rewards.code.wire import MAX_LINE_BYTES, WireError, decode, dump_line, encode, load_line

TYPE_CHECKING = False
if TYPE_CHECKING:  # importing typing would cost every run a few milliseconds
    from collections.abc import Callable
    from typing import Any, BinaryIO

SOLUTION_FILE = "solution.py"
CONTEXT_FILE = "prompt.py"
OWN_FILES = frozenset({SOLUTION_FILE, CONTEXT_FILE})
MAX_TRACEBACK_CHARS = 1500
MAX_MESSAGE_CHARS = 300
MAX_FRAMES = 6


class TestTimeout(BaseException):
    """The CPU-time alarm of one call. A BaseException so that the
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


def compile_as(source: str, filename: str) -> types.CodeType:
    """Compile ``source`` so that tracebacks show its lines under ``filename``."""
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    return compile(source, filename, "exec")


def own_frames(exc: BaseException) -> str:
    """The traceback frames of the program's own files, formatted ("" if none)."""
    frames = [frame for frame in traceback.extract_tb(exc.__traceback__) if frame.filename in OWN_FILES]
    return "".join(traceback.format_list(frames[-MAX_FRAMES:]))


def describe(exc: BaseException, cpu_s: float) -> dict[str, str]:
    """Type, message, own frames and the exception line, each capped; never raises."""
    if isinstance(exc, TestTimeout):
        return {"type": "Timeout", "message": f"used more than {cpu_s:g}s of CPU time", "frames": "", "summary": ""}
    try:
        summary = "".join(traceback.format_exception_only(type(exc), exc))
        return {
            "type": type(exc).__name__,
            "message": str(exc)[:MAX_MESSAGE_CHARS],
            "frames": own_frames(exc)[-MAX_TRACEBACK_CHARS:],
            "summary": summary[-MAX_TRACEBACK_CHARS:],
        }
    except BaseException:  # noqa: BLE001 - the candidate's own exception class may not even print
        return {"type": type(exc).__name__, "message": "", "frames": "", "summary": ""}


def load(spec: dict[str, Any]) -> Callable[..., Any]:
    """The candidate's function, loaded with the prompt's code before it."""
    cpu_s, entry = spec["cpu_s"], spec["entry_point"]
    module = types.ModuleType("solution")
    sys.modules["solution"] = module  # dataclasses and pickle look their module up there
    namespace = module.__dict__
    missing = object()
    if spec["context"]:
        context = compile_as(spec["context"], CONTEXT_FILE)
        limited(cpu_s, lambda: exec(context, namespace))
    before = namespace.get(entry, missing)
    solution = compile_as(spec["solution"], SOLUTION_FILE)
    limited(cpu_s, lambda: exec(solution, namespace))
    function = namespace.get(entry, missing)
    if function is missing or function is before:
        raise NameError(f"the program does not define a function named {entry!r}")
    return function


def answer(function: Callable[..., Any], request: dict[str, Any], cpu_s: float) -> bytes:
    """The reply line to one call request."""
    args, kwargs = decode(request["args"]), decode(request["kwargs"])
    try:
        return limited(cpu_s, lambda: _value_line(function(*args, **kwargs)))
    except TestTimeout:
        return dump_line({"timeout": True})
    except BaseException as exc:  # noqa: BLE001 - whatever the call raised is its answer
        return dump_line({"raised": describe(exc, cpu_s)})


def _value_line(result: Any) -> bytes:
    try:
        line = dump_line({"value": encode(result)})
    except (WireError, RecursionError) as exc:
        reason = str(exc) if isinstance(exc, WireError) else "a value nested too deeply (or containing itself)"
        return dump_line({"unsendable": reason})
    if len(line) > MAX_LINE_BYTES:
        return dump_line({"unsendable": f"a value of more than {MAX_LINE_BYTES >> 20} MiB"})
    return line


def take_channel() -> tuple[BinaryIO, int]:
    """Move the channel off fds 0 and 1: (reader, writer fd)."""
    reader = os.fdopen(os.dup(0), "rb")
    writer = os.dup(1)
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    os.dup2(2, 1)
    return reader, writer


def send(writer: int, line: bytes) -> None:
    """Write a whole line; a checker that has hung up ends this process."""
    view = memoryview(line)
    try:
        while view:
            view = view[os.write(writer, view) :]
    except OSError:
        finish()


def finish() -> None:
    """Flush what the program printed and exit, skipping the candidate's ``atexit`` hooks."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:  # noqa: BLE001 - the candidate may have closed or replaced it
            pass
    os._exit(0)


def main(payload: str) -> None:
    spec = load_line(payload.encode())
    reader, writer = take_channel()
    signal.signal(signal.SIGPROF, _on_alarm)
    try:
        function = load(spec)
    except BaseException as exc:  # noqa: BLE001 - whatever the candidate does is a failed load
        send(writer, dump_line({"load_error": describe(exc, spec["cpu_s"])}))
        finish()
    send(writer, dump_line({"ready": True}))
    for line in reader:
        send(writer, answer(function, load_line(line), spec["cpu_s"]))
    finish()
