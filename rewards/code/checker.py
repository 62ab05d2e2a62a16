"""The trusted side of a code grade: the task's tests, run against a proxy of the candidate.

:mod:`rewards.code.session` starts this file (bundled with :mod:`rewards.code.wire`)
for every grade as ``python -I -S -B -c PROGRAM``, outside the sandbox: it
runs only the task's own code (the prompt's helpers, the test module, its
steps), which is trusted data shipped with the task. The spec arrives as
JSON on stdin; the report leaves as JSON on stdout, which only the grader
reads. The candidate program never runs here.

In the tests' namespace the task's function (and ``check``'s parameter) is
a :class:`Candidate`: each call sends its arguments as plain data over a
pipe to the sandboxed candidate process (:mod:`rewards.code.candidate`) and
turns the reply into fresh builtins (:func:`rewards.code.wire.decode`), or
into an exception. So a custom ``__eq__`` never reaches a comparison, and
nothing the candidate does can touch the verdict, which lives only here.

Replies are read with a deadline (the run's wall-clock limit) and a line
cap; anything that is not a well-formed reply to the call in flight (a
forged frame, garbage, an endless line, end of file because the program
died) fails that call and ends the session: the tests after it fail.

Steps run in order in one namespace, as ``check`` would run them, and the
report records pass/fail per test and the first failure in full (test text,
the value a plain ``assert f(x) == y`` saw, the error and a traceback of
the test's and the program's frames). A failed set-up step, a call that
timed out or a broken channel end the run: the tests after it fail. With
hidden tests the report carries no test text, no values computed by a test
and only the program's own frames.

After the tests, the visible example calls (from the prompt) are made once
more to compute the answer key: a hash of their outcomes, see
:mod:`rewards.code.grader`.
"""

from __future__ import annotations

import ast
import builtins
import hashlib
import json
import linecache
import os
import select
import sys
import time
import traceback
import types

from rewards.code.wire import MAX_LINE_BYTES, WireError, decode, dump_line, encode, load_line

TYPE_CHECKING = False
if TYPE_CHECKING:  # importing typing would cost every run a few milliseconds
    from typing import Any, TypeGuard

OBSERVED = "__observed__"
MAX_REPR_CHARS = 200
MAX_SOURCE_CHARS = 2000
MAX_TRACEBACK_CHARS = 1500
_READ_CHUNK = 1 << 16


class CallFailed(BaseException):
    """A call that gave no answer a test may look at.

    A BaseException so that a test's own ``except Exception`` cannot turn it
    into a pass. ``kind`` is what the feedback calls it; ``fatal`` ones end
    the session (the channel is broken, or the program would likely time
    out again).
    """

    def __init__(self, kind: str, message: str, fatal: bool) -> None:
        super().__init__(message)
        self.kind, self.message, self.fatal = kind, message, fatal


class CandidateError(Exception):
    """Stands for an exception of a type that is not a builtin one, raised by the program."""


class Channel:
    """Request and reply lines over two pipes, with a deadline and a line cap."""

    def __init__(self, send_fd: int, receive_fd: int, deadline: float) -> None:
        self.send_fd, self.receive_fd, self.deadline = send_fd, receive_fd, deadline
        self.buffer = bytearray()
        self.broken: CallFailed | None = None
        os.set_blocking(send_fd, False)
        os.set_blocking(receive_fd, False)

    def request(self, message: dict[str, Any]) -> dict[str, Any]:
        """Send one request and return its reply; a broken channel stays broken."""
        if self.broken is not None:
            raise self.broken
        try:
            self._send(dump_line(message))
            return self.receive()
        except CallFailed as failure:
            self.broken = failure
            raise

    def receive(self) -> dict[str, Any]:
        """The next message; CallFailed (fatal) for anything else."""
        try:
            return load_line(self._read_line())
        except WireError as exc:
            raise CallFailed(
                "ProtocolError", f"your program sent the grader something that is not a reply: {exc}", True
            ) from None

    def close(self) -> None:
        """Hang up: the candidate process sees the end of its requests and exits."""
        for fd in (self.send_fd, self.receive_fd):
            os.close(fd)

    def _wait(self, readable: bool) -> None:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise CallFailed("Timeout", "your program did not answer within the time limit", True)
        poller = select.poll()  # not select(): the grader's descriptor numbers may pass 1024
        poller.register(self.receive_fd if readable else self.send_fd, select.POLLIN if readable else select.POLLOUT)
        poller.poll(remaining * 1000)

    def _send(self, line: bytes) -> None:
        view = memoryview(line)
        while view:
            self._wait(readable=False)
            try:
                view = view[os.write(self.send_fd, view) :]
            except BlockingIOError:
                continue
            except OSError:
                raise CallFailed("ProgramEnded", "your program ended during the tests", True) from None

    def _read_line(self) -> bytes:
        searched = 0
        while (end := self.buffer.find(b"\n", searched)) < 0:
            if len(self.buffer) > MAX_LINE_BYTES:
                raise CallFailed(
                    "ProtocolError", f"your program sent more than {MAX_LINE_BYTES >> 20} MiB at once", True
                )
            searched = len(self.buffer)
            self._wait(readable=True)
            try:
                chunk = os.read(self.receive_fd, _READ_CHUNK)
            except BlockingIOError:
                continue
            if not chunk:
                raise CallFailed("ProgramEnded", "your program ended during the tests", True)
            self.buffer += chunk
        line = bytes(self.buffer[:end])
        del self.buffer[: end + 1]
        return line


class Candidate:
    """The candidate's function as the tests see it: calls cross the channel as plain data."""

    def __init__(self, channel: Channel, name: str, cpu_s: float) -> None:
        self.channel, self.__name__, self.cpu_s = channel, name, cpu_s

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            request = {"args": encode(list(args)), "kwargs": encode(kwargs)}
        except (WireError, RecursionError) as exc:
            raise CallFailed(
                "UnsupportedArgument", f"the test passed an argument the grader cannot send: {exc}", False
            ) from None
        return self._outcome(self.channel.request(request))

    def __repr__(self) -> str:
        return f"<function {self.__name__}>"

    def _outcome(self, reply: dict[str, Any]) -> Any:
        """The reply as a value or an exception (fatal CallFailed if it is no valid reply)."""
        kind = next(iter(reply), None) if len(reply) == 1 else None
        payload = reply.get(kind) if kind else None
        if kind == "value":
            try:
                return decode(payload)
            except (WireError, RecursionError):
                pass
        elif kind == "raised" and _is_error(payload):
            raise remote_exception(payload)
        elif kind == "timeout":
            raise CallFailed("Timeout", f"used more than {self.cpu_s:g}s of CPU time", True)
        elif kind == "unsendable" and isinstance(payload, str):
            raise CallFailed("NotPlainData", f"your function returned {payload[:300]}", False)
        self.channel.broken = CallFailed("ProtocolError", "your program sent the grader a malformed reply", True)
        raise self.channel.broken


def _is_error(payload: Any) -> TypeGuard[dict[str, str]]:
    return isinstance(payload, dict) and all(
        isinstance(payload.get(key), str) for key in ("type", "message", "frames", "summary")
    )


def remote_exception(info: dict[str, str]) -> Exception:
    """An exception of the builtin type the program raised (else CandidateError), carrying its description.

    Builtin types keep a test's ``except ValueError`` working; the program's
    own classes never cross (only their names do).
    """
    kind = getattr(builtins, info["type"], None)
    exc: Exception | None = None
    if isinstance(kind, type) and issubclass(kind, Exception):
        try:
            exc = kind(info["message"])
        except Exception:  # noqa: BLE001 - e.g. UnicodeDecodeError wants five arguments
            exc = None
    exc = exc or CandidateError(info["message"])
    exc.candidate_error = info  # type: ignore[attr-defined]
    return exc


def error_record(info: dict[str, str], test_frames: str = "") -> dict[str, str]:
    """``{type, message, traceback}`` for the report from the candidate's description of an exception."""
    frames = test_frames + info["frames"]
    text = ("Traceback (most recent call last):\n" + frames if frames else "") + info["summary"]
    return {"type": info["type"], "message": info["message"], "traceback": text[-MAX_TRACEBACK_CHARS:]}


def describe(exc: BaseException, shown_files: set[str], hidden: bool) -> dict[str, str]:
    """The report's record of a failed step: the test's frames in ``shown_files``, then the program's."""
    frames = [frame for frame in traceback.extract_tb(exc.__traceback__) if frame.filename in shown_files]
    test_frames = "".join(traceback.format_list(frames))
    remote = getattr(exc, "candidate_error", None)
    if remote is not None:
        if hidden and remote["type"] == "AssertionError":  # its message may quote the hidden test's values
            remote = {**remote, "message": "", "summary": "AssertionError\n"}
        return error_record(remote, test_frames)
    if isinstance(exc, CallFailed):
        summary, message = f"{exc.kind}: {exc.message}\n", exc.message
    elif hidden and isinstance(exc, AssertionError):
        summary, message = "AssertionError\n", ""
    else:
        summary, message = "".join(traceback.format_exception_only(type(exc), exc)), str(exc)
    info = {
        "type": exc.kind if isinstance(exc, CallFailed) else type(exc).__name__,
        "message": message,
        "frames": "",
        "summary": summary,
    }
    return error_record(info, test_frames)


def compile_step(source: str, filename: str) -> types.CodeType:
    """Compile a test step; a plain ``assert f(x) == y`` (or ``assert f(x)``)
    also keeps ``f(x)`` in :data:`OBSERVED`, so that feedback can say what the
    function returned without calling it a second time."""
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
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


def run_steps(spec: dict[str, Any], candidate: Candidate, report: dict[str, Any]) -> bool:
    """Run every step into ``report``; True if the run went to the end (nothing fatal)."""
    hidden = spec["hidden"]
    steps = spec["steps"]  # [filename, source, is_test]
    shown = set() if hidden else {filename for filename, _, _ in steps}
    bindings = {name: candidate for name in spec["candidate_names"]}
    namespace: dict[str, Any] = {"__name__": "tests"}
    aborted = False
    test_number = 0
    for filename, source, is_test in steps:
        test_number += is_test
        passed = False
        if not aborted:
            # Bound before every step: the prompt's own stub of the function would replace the proxy.
            namespace.update(bindings)
            namespace.pop(OBSERVED, None)
            try:
                exec(compile_step(source, filename), namespace)
                passed = True
            except BaseException as exc:  # noqa: BLE001 - a failing step, whatever it raised
                if report["failure"] is None:
                    report["failure"] = {
                        "test": test_number if is_test else None,
                        "source": None if hidden else source[:MAX_SOURCE_CHARS],
                        "error": describe(exc, shown, hidden),
                        "observed": _observed(namespace) if isinstance(exc, AssertionError) and not hidden else None,
                    }
                aborted = not is_test or (isinstance(exc, CallFailed) and exc.fatal)
        if is_test:
            report["passed"].append(passed)
    return not aborted


def _observed(namespace: dict[str, Any]) -> str | None:
    """The repr of the value a failed assert checked (plain data from the channel), if its step kept one."""
    return repr(namespace[OBSERVED])[:MAX_REPR_CHARS] if OBSERVED in namespace else None


def answer_key(candidate: Candidate, examples: list[Any]) -> str | None:
    """A hash of the outcomes of the example calls; None if none gave a value or the session broke."""
    outcomes: list[Any] = []
    for args, kwargs in (decode(example) for example in examples):
        try:
            outcomes.append(["value", encode(candidate(*args, **kwargs), canonical=True)])
        except CallFailed as failure:
            if failure.fatal:
                return None
            outcomes.append(["failed", failure.kind])
        except Exception as exc:  # noqa: BLE001 - an exception is behaviour too
            outcomes.append(["raised", getattr(exc, "candidate_error", {}).get("type", type(exc).__name__)])
    if not any(kind == "value" for kind, _ in outcomes):
        return None
    return hashlib.sha256(json.dumps(outcomes, sort_keys=True).encode()).hexdigest()[:16]


def run_session(spec: dict[str, Any], channel: Channel) -> dict[str, Any]:
    """Wait for the candidate to load, run the tests, compute the answer key; the report."""
    num_tests = sum(is_test for _, _, is_test in spec["steps"])
    report: dict[str, Any] = {
        "passed": [],
        "started": False,
        "load_error": None,
        "failure": None,
        "ended": None,
        "answer_key": None,
    }
    try:
        hello = channel.receive()
    except CallFailed as failure:
        hello, channel.broken = {}, failure
    if _is_error(hello.get("load_error")):
        report["load_error"] = error_record(hello["load_error"])
    elif hello == {"ready": True}:
        report["started"] = True
        candidate = Candidate(channel, spec["entry_point"], spec["cpu_s"])
        if run_steps(spec, candidate, report):
            report["answer_key"] = answer_key(candidate, spec["examples"])
    elif channel.broken is None:
        channel.broken = CallFailed(
            "ProtocolError", "your program sent the grader something other than its start", True
        )
    report["passed"] += [False] * (num_tests - len(report["passed"]))
    report["ended"] = channel.broken.kind if channel.broken is not None else None
    return report


def main() -> None:
    spec = json.loads(sys.stdin.buffer.read())
    report_fd = os.dup(1)
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)  # what the test code prints must not mix with the report
    channel = Channel(spec["send_fd"], spec["receive_fd"], time.monotonic() + spec["deadline_s"])
    report = run_session(spec, channel)
    channel.close()
    data = memoryview(json.dumps(report).encode())
    while data:
        data = data[os.write(report_fd, data) :]
