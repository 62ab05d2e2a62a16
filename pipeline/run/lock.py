"""One writing process per run directory: a second one fails at once, naming the holder's pid.

Two processes that drive the same run (two ``selfimprove resume``, or a
``train`` beside a ``run``) would overwrite each other's manifest. Each
command that writes a run takes an exclusive ``flock`` on ``run.lock`` in
the run directory for its whole life; the kernel drops the lock when the
process dies, however it dies, so a killed run never leaves a stale lock.
Read-only commands (``status``, ``report``) do not lock.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LOCK_NAME = "run.lock"


class RunLockedError(RuntimeError):
    """Another process holds the run directory's lock."""


@contextmanager
def run_lock(root: Path) -> Iterator[None]:
    """Hold ``root/run.lock`` while the body runs; raise :class:`RunLockedError` if another process holds it."""
    path = Path(root) / LOCK_NAME
    with open(path, "a+", encoding="utf-8") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "unknown"
            raise RunLockedError(
                f"{root} is in use by another selfimprove process (pid {holder}); wait for it to end or stop it"
            ) from None
        lock.seek(0)
        lock.truncate()
        lock.write(f"{os.getpid()}\n")
        lock.flush()
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
