"""Grading in worker processes, with a hard time limit per response.

Why not ``concurrent.futures.ProcessPoolExecutor``: it cannot stop one hung
task, and a symbolic comparison can hang for minutes (math-verify on
``10^{10^{10}}`` computes the number). Here each worker process runs one task
at a time; when a task passes its deadline its worker is killed and replaced,
the task resolves to ``GradeResult.failure("timeout")`` and the other tasks
go on. A dispatcher thread in the parent hands tasks to idle workers and
watches results, deadlines and dead workers with one
``multiprocessing.connection.wait``.

Workers start with ``forkserver`` (``spawn`` where that is missing): never a
plain ``fork`` of the parent, which has threads (vLLM clients, the event
loop) and could deadlock in the child. The forkserver preloads the graders,
and a worker reports ready only once it can grade, so import time never counts
against a task's deadline.

Like any multiprocessing user, a script that starts a pool needs the
``if __name__ == "__main__":`` guard.

Results come back as ``concurrent.futures.Future``: the rollout can submit
while generation continues and await them with ``asyncio.wrap_future``.
"""

from __future__ import annotations

import atexit
import math
import multiprocessing
import os
import pickle
import signal
import threading
import time
from collections import deque
from collections.abc import Iterable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import Any

from rewards.base import GradeResult, Grader

DEFAULT_TIMEOUT_S = 10.0
MAX_STARTUP_FAILURES = 3
"""Workers that die before they are ready, in a row, before the pool gives up
(a broken environment would otherwise respawn them forever)."""

_READY = "ready"
_in_worker = False


def in_grading_worker() -> bool:
    """True inside a pool worker process: graders that need isolation run
    there directly instead of submitting to a pool again."""
    return _in_worker


def _worker_main(conn: Connection) -> None:
    """A worker: grade one pickled (grader, response, reference) at a time."""
    global _in_worker
    _in_worker = True
    # Ctrl-C reaches the whole process group; the parent decides when workers stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Unpickling this function imported the ``rewards`` package, and with it
    # every built-in grader and math-verify: the worker is ready to grade.
    conn.send(_READY)
    while True:
        try:
            payload = conn.recv_bytes()
        except EOFError:  # the parent is gone
            return
        conn.send(_grade_payload(payload))


def _grade_payload(payload: bytes) -> GradeResult:
    """Graders promise not to raise; a broken one still must not kill a batch."""
    try:
        grader, response, reference = pickle.loads(payload)
        result = grader.grade(response, reference)
    except Exception as exc:
        return GradeResult.failure(f"grader raised {type(exc).__name__}: {exc}"[:300])
    if not isinstance(result, GradeResult):
        return GradeResult.failure(f"grader returned {type(result).__name__}, not GradeResult")
    return result


@dataclass
class _Task:
    payload: bytes
    future: Future[GradeResult]


@dataclass
class _Worker:
    process: BaseProcess
    conn: Connection
    ready: bool = False
    task: _Task | None = None
    deadline: float = math.inf


class GradingPool:
    """Worker processes that grade with a hard per-response timeout.

    Use as a context manager, or call :meth:`close`. ``max_workers`` defaults
    to the number of CPUs; ``timeout_s`` is the hard limit for one response,
    counted from when a worker starts on it.
    """

    def __init__(self, max_workers: int | None = None, timeout_s: float = DEFAULT_TIMEOUT_S, start_method: str | None = None) -> None:
        if timeout_s <= 0:
            raise ValueError("timeout_s must be positive")
        methods = multiprocessing.get_all_start_methods()
        self._ctx = multiprocessing.get_context(start_method or ("forkserver" if "forkserver" in methods else "spawn"))
        if self._ctx.get_start_method() == "forkserver":
            # Workers then fork from a server that has imported the graders
            # (and sympy) once: a worker replaced after a timeout is ready in
            # milliseconds instead of a second. It takes effect only if this
            # process's forkserver has not started yet; "__main__" is the default.
            self._ctx.set_forkserver_preload(["__main__", "rewards"])
        self.timeout_s = timeout_s
        self._lock = threading.Lock()
        self._inbox: list[_Task] = []
        self._closing = False
        self._cancel = False
        self._stopped = False
        self._broken: str | None = None
        self._startup_failures = 0
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._workers = [self._spawn() for _ in range(max_workers or os.cpu_count() or 1)]
        self._thread = threading.Thread(target=self._dispatch, name="grading-pool", daemon=True)
        self._thread.start()

    def __enter__(self) -> "GradingPool":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def submit(self, grader: Grader, response: Any, reference: Any) -> Future[GradeResult]:
        """Queue one response; the future resolves to its GradeResult (never an exception)."""
        future: Future[GradeResult] = Future()
        try:
            payload = pickle.dumps((grader, response, reference), protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:
            future.set_result(GradeResult.failure(f"cannot send to a grading worker: {exc}"[:300]))
            return future
        with self._lock:
            if self._closing:
                raise RuntimeError("GradingPool is closed")
            self._inbox.append(_Task(payload, future))
            self._wake()
        return future

    def grade_many(self, grader: Grader, pairs: Iterable[tuple[Any, Any]]) -> list[GradeResult]:
        """Grade (response, reference) pairs; results in input order."""
        futures = [self.submit(grader, response, reference) for response, reference in pairs]
        return [future.result() for future in futures]

    def close(self, wait: bool = True) -> None:
        """Stop the workers. ``wait``: finish queued tasks first; otherwise they
        resolve to a "pool closed" failure."""
        with self._lock:
            if self._stopped:
                return
            self._closing = True
            self._cancel = self._cancel or not wait
            self._wake()
        self._thread.join()
        with self._lock:
            if not self._stopped:
                self._stopped = True
                os.close(self._wake_r)
                os.close(self._wake_w)

    # --- the dispatcher thread -------------------------------------------

    def _dispatch(self) -> None:
        pending: deque[_Task] = deque()
        try:
            self._dispatch_until_closed(pending)
        finally:
            # Also reached if the dispatcher itself fails (say, no more file
            # descriptors for a new worker): no future may be left waiting.
            with self._lock:
                self._closing = True
                pending.extend(self._inbox)
                self._inbox.clear()
            for task in pending:
                _resolve(task.future, GradeResult.failure("pool closed"))
            for worker in list(self._workers):
                self._replace(worker, "pool closed", respawn=False)

    def _dispatch_until_closed(self, pending: deque[_Task]) -> None:
        while True:
            with self._lock:
                pending.extend(self._inbox)
                self._inbox.clear()
                closing, cancel = self._closing, self._cancel
            if cancel or self._broken:
                while pending:
                    _resolve(pending.popleft().future, GradeResult.failure(self._broken or "pool closed"))
            if cancel:
                return
            self._assign(pending)
            busy = [worker for worker in self._workers if worker.task]
            if closing and not pending and not busy:
                return
            deadline = min((worker.deadline for worker in busy), default=None)
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            # Only the workers waited on are polled: a replacement may reuse
            # the file descriptor numbers of the worker it replaces.
            waited = list(self._workers)
            handles: list[Any] = [self._wake_r]
            for worker in waited:
                handles += [worker.conn, worker.process.sentinel]
            ready = wait(handles, timeout)
            if self._wake_r in ready:
                os.read(self._wake_r, 1 << 16)
            for worker in waited:
                self._poll(worker, ready)
            now = time.monotonic()
            for worker in list(self._workers):
                if worker.task and worker.deadline <= now:
                    self._replace(worker, "timeout")

    def _assign(self, pending: deque[_Task]) -> None:
        idle = [worker for worker in self._workers if worker.ready and not worker.task]
        while pending and idle:
            task = pending.popleft()
            if not task.future.set_running_or_notify_cancel():
                continue
            worker = idle.pop()
            worker.task, worker.deadline = task, time.monotonic() + self.timeout_s
            try:
                worker.conn.send_bytes(task.payload)
            except OSError:
                self._replace(worker, "grading worker died")

    def _poll(self, worker: _Worker, ready: list[Any]) -> None:
        """Take a message from ``worker`` if it sent one; replace it if it died."""
        if worker.conn in ready:
            try:
                message = worker.conn.recv()
            except (EOFError, OSError):
                self._replace(worker, "grading worker died")
                return
            if message == _READY:
                worker.ready, self._startup_failures = True, 0
            elif worker.task:
                _resolve(worker.task.future, message)
                worker.task, worker.deadline = None, math.inf
        elif worker.process.sentinel in ready:
            self._replace(worker, "grading worker died")

    def _replace(self, worker: _Worker, reason: str, respawn: bool = True) -> None:
        """Kill ``worker``, fail its task with ``reason`` and start another."""
        self._workers.remove(worker)
        worker.process.kill()
        worker.process.join()
        worker.process.close()
        worker.conn.close()
        if worker.task:
            _resolve(worker.task.future, GradeResult.failure(reason))
        if not worker.ready:
            self._startup_failures += 1
            if self._startup_failures >= MAX_STARTUP_FAILURES:
                self._broken = "grading workers fail to start"
        if respawn and not self._broken:
            self._workers.append(self._spawn())

    def _spawn(self) -> _Worker:
        parent, child = self._ctx.Pipe()
        process = self._ctx.Process(target=_worker_main, args=(child,), name="grading-worker", daemon=True)
        process.start()
        child.close()
        return _Worker(process, parent)

    def _wake(self) -> None:
        """Interrupt the dispatcher's wait (call with the lock held: the pipe
        closes under it)."""
        try:
            os.write(self._wake_w, b"\0")
        except BlockingIOError:  # the pipe is full: the dispatcher is waking anyway
            pass


def _resolve(future: Future[GradeResult], result: GradeResult) -> None:
    if not future.done():
        future.set_result(result)


_default: GradingPool | None = None
_default_pid = 0
_default_lock = threading.Lock()


def default_pool() -> GradingPool:
    """A shared pool (one worker per CPU, :data:`DEFAULT_TIMEOUT_S`), started
    on first use and stopped at exit. A forked child gets its own."""
    global _default, _default_pid
    with _default_lock:
        if _default is None or _default_pid != os.getpid():
            _default, _default_pid = GradingPool(), os.getpid()
            atexit.register(_default.close, wait=False)
        return _default


def grade_batch(grader: Grader, responses: Sequence[Any], references: Sequence[Any], workers: int | None = None) -> list[GradeResult]:
    """Grade ``responses[i]`` against ``references[i]`` in worker processes.

    ``workers=None`` uses the shared :func:`default_pool` (no start-up cost
    per batch); a number starts a pool of that size for this batch only.
    """
    if len(responses) != len(references):
        raise ValueError(f"{len(responses)} responses but {len(references)} references")
    if workers is None:
        return default_pool().grade_many(grader, zip(responses, references))
    with GradingPool(max_workers=workers) as pool:
        return pool.grade_many(grader, zip(responses, references))
