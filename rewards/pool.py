"""Grading where it is cheapest: in the caller when a grade cannot hang, else
in worker processes with a hard timeout per response.

Each grader declares where its grades run (:class:`rewards.base.Placement`).
``INLINE`` graders (numeric) grade in the calling process: their work is
bounded by construction, and a round trip to a worker would cost more than
the grade. The others can hang (math-verify computes ``10^{10^{10}}``; a
program can loop) and go to pebble's ``ProcessPool``, whose
``schedule(timeout=)`` kills a worker whose job passes its deadline and
starts another, so one hung response never blocks the rest.

Cheap graders that can hang (``POOL_CHUNKED``, math) send several responses
per job, so the round trip is shared. A job's deadline is still the
per-response limit: a job that finishes within it proves that no response in
it ran over, and one that does not (or whose worker died) is graded again one
response per job, so every response gets exactly the verdict it would get on
its own. ``POOL`` graders (code, and any grader that declares nothing) send
one response per job.

Workers start with ``forkserver`` (``spawn`` where that is missing): never a
plain ``fork`` of the parent, which has threads (vLLM clients, the event
loop) and could deadlock in the child. The forkserver preloads the graders,
so a worker replaced after a timeout is ready in milliseconds, and a job's
deadline counts from when a worker takes it, so start-up never counts. A
grader whose library takes long to import names it in ``preload``
(:func:`preloaded`), which the pool's owner passes on: every worker imports it
when it starts, not in its first job.
Like any multiprocessing user, a script that starts a pool needs the
``if __name__ == "__main__":`` guard.
"""

from __future__ import annotations

import atexit
import importlib
import math
import multiprocessing
import os
import pickle
import threading
from collections.abc import Sequence
from concurrent import futures
from concurrent.futures import CancelledError, Future
from typing import Any

from pebble import ProcessExpired, ProcessPool

from rewards.base import Grader, GradeResult, Placement

DEFAULT_TIMEOUT_S = 10.0
MAX_CHUNK = 64
"""Most responses in one job of a ``POOL_CHUNKED`` grader: about 64 ms of
math-verify, against a round trip of about a millisecond."""

Pair = tuple[Any, Any]
"""(response, reference)"""
_Item = tuple[Pair, "Future[GradeResult]"]

_in_worker = False


def in_grading_worker() -> bool:
    """True inside a pool worker process: graders that need isolation run
    there directly instead of submitting to a pool again."""
    return _in_worker


def _start_worker(preload: Sequence[str]) -> None:
    """pebble's worker initializer (pebble's workers already ignore Ctrl-C): marks the worker and imports
    ``preload``. A module that cannot be imported is left to the grade that needs it, which says why; failing
    here would make pebble start the worker again, forever."""
    global _in_worker
    _in_worker = True
    for module in preload:
        try:
            importlib.import_module(module)
        except ImportError:
            pass


def placement(grader: Grader) -> Placement:
    """Where ``grader``'s grades run; a grader that declares nothing runs alone in the pool."""
    return getattr(grader, "placement", Placement.POOL)


def preloaded(grader: Grader) -> tuple[str, ...]:
    """The modules ``grader`` asks pool workers to import when they start (its ``preload``; none by default)."""
    return tuple(getattr(grader, "preload", ()))


def _grade_one(grader: Grader, response: Any, reference: Any) -> GradeResult:
    """Graders promise not to raise; a broken one still must not kill a batch."""
    try:
        result = grader.grade(response, reference)
    except Exception as exc:
        return GradeResult.raised(exc)
    if not isinstance(result, GradeResult):
        return GradeResult.failure(f"grader returned {type(result).__name__}, not GradeResult")
    return result


def _grade_job(grader: Grader, pairs: list[Pair]) -> list[GradeResult]:
    """One job in a worker: the pairs in order."""
    return [_grade_one(grader, response, reference) for response, reference in pairs]


def _failure_reason(error: BaseException) -> str:
    """A failed job's error as the ``GradeResult.error`` of its single response."""
    if isinstance(error, TimeoutError):
        return "timeout"
    if isinstance(error, ProcessExpired):
        return "grading worker died"
    if isinstance(error, (pickle.PicklingError, TypeError, AttributeError)):  # what pebble's dispatch raises
        return f"cannot send to a grading worker: {error}"[:300]
    return f"grading pool failed: {type(error).__name__}: {error}"[:300]


class GradingPool:
    """Grades batches where each grader's grades belong (module doc).

    Use as a context manager, or call :meth:`close`. ``max_workers`` defaults
    to the number of CPUs; ``timeout_s`` is the hard limit for one response,
    counted from when a worker starts on it; ``preload``: the modules every
    worker imports when it starts (:func:`preloaded` of the graders it will run).
    """

    def __init__(
        self,
        max_workers: int | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        start_method: str | None = None,
        preload: Sequence[str] = (),
    ) -> None:
        if timeout_s <= 0:
            raise ValueError("timeout_s must be positive")
        methods = multiprocessing.get_all_start_methods()
        context = multiprocessing.get_context(start_method or ("forkserver" if "forkserver" in methods else "spawn"))
        if context.get_start_method() == "forkserver":
            # Takes effect only if this process's forkserver has not started yet; the workers' own imports of
            # ``preload`` cover the other case.
            context.set_forkserver_preload(["__main__", "rewards", *preload])
        self.timeout_s = timeout_s
        self.workers = max_workers or os.cpu_count() or 1
        self._pool = ProcessPool(
            max_workers=self.workers, initializer=_start_worker, initargs=(tuple(preload),), context=context
        )
        self._lock = threading.Lock()
        self._closing = False
        self._stopped = False  # the workers are being stopped: a job that fails now failed because of it
        self._waiting: set[Future[GradeResult]] = set()

    def __enter__(self) -> GradingPool:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc_info: object) -> None:
        """Leaving on an error or Ctrl-C abandons the grades still running: nobody waits for them."""
        self.close(wait=exc_type is None)

    def submit(self, grader: Grader, pairs: Sequence[Pair]) -> Future[list[GradeResult]]:
        """Grade (response, reference) pairs as one batch: a future resolving
        to their GradeResults in input order (never an exception). An
        ``INLINE`` grader's is resolved on return, with no future per pair:
        a grade costs a few microseconds and a future about as much."""
        with self._lock:
            if self._closing:
                raise RuntimeError("GradingPool is closed")
        where = placement(grader)
        if where is Placement.INLINE:
            batch: Future[list[GradeResult]] = Future()
            batch.set_result([_grade_one(grader, response, reference) for response, reference in pairs])
            return batch
        items: list[_Item] = [(pair, Future()) for pair in pairs]
        batch = _gathered([future for _, future in items])
        size = self._chunk_size(len(items)) if where is Placement.POOL_CHUNKED else 1
        for start in range(0, len(items), size):
            self._schedule(grader, items[start : start + size])
        return batch

    def close(self, wait: bool = True) -> None:
        """Stop the workers. ``wait``: finish what was submitted first;
        otherwise it resolves to a "pool closed" failure. A second close does nothing."""
        with self._lock:
            if self._closing:
                return
            self._closing = True
            waiting = list(self._waiting)
        if wait:
            futures.wait(waiting)  # a failed job's retries are scheduled before its futures resolve
        self._stopped = True
        self._pool.stop()
        self._pool.join()
        with self._lock:
            left = list(self._waiting)
        for future in left:
            self._resolve(future, GradeResult.failure("pool closed"))

    def _chunk_size(self, count: int) -> int:
        """Responses per job: the batch spread over the workers, at most :data:`MAX_CHUNK`."""
        return max(1, min(MAX_CHUNK, math.ceil(count / self.workers)))

    def _schedule(self, grader: Grader, items: list[_Item]) -> None:
        """Send ``items`` as one job; its outcome settles their futures."""
        with self._lock:
            self._waiting.update(future for _, future in items)
        try:
            job = self._pool.schedule(_grade_job, args=(grader, [pair for pair, _ in items]), timeout=self.timeout_s)
        except RuntimeError as exc:  # pebble refuses jobs once it is stopping
            reason = "pool closed" if self._stopped else f"grading pool failed: {exc}"
            for _, future in items:
                self._resolve(future, GradeResult.failure(reason))
            return
        job.add_done_callback(lambda done: self._settle(grader, items, done))

    def _settle(self, grader: Grader, items: list[_Item], job: Future[list[GradeResult]]) -> None:
        """Resolve a finished job's futures, or grade its responses again one per job (module doc)."""
        error = CancelledError() if job.cancelled() else job.exception()
        if error is None:
            for (_, future), result in zip(items, job.result()):
                self._resolve(future, result)
        elif self._stopped:
            for _, future in items:
                self._resolve(future, GradeResult.failure("pool closed"))
        elif len(items) > 1:
            for item in items:
                self._schedule(grader, [item])
        else:
            self._resolve(items[0][1], GradeResult.failure(_failure_reason(error)))

    def _resolve(self, future: Future[GradeResult], result: GradeResult) -> None:
        with self._lock:
            self._waiting.discard(future)
        if not future.done():  # close(wait=False) fails what is left while a job may still settle
            future.set_result(result)


def _gathered(parts: list[Future[GradeResult]]) -> Future[list[GradeResult]]:
    """A future of all of ``parts``' results in order, resolved by whichever part resolves last."""
    batch: Future[list[GradeResult]] = Future()
    remaining = len(parts)
    lock = threading.Lock()

    def part_done(_: Future[GradeResult]) -> None:
        nonlocal remaining
        with lock:
            remaining -= 1
            if remaining:
                return
        if batch.set_running_or_notify_cancel():  # False: the caller cancelled the batch
            batch.set_result([part.result() for part in parts])

    if not parts:
        batch.set_result([])
    for part in parts:
        part.add_done_callback(part_done)
    return batch


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
