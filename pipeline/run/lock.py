"""One writing process per run directory: a second one fails at once, naming the holder's pid.

Two processes that drive the same run (two ``selfimprove resume``, or a
``train`` beside a ``run``) would overwrite each other's manifest. Each
command that writes a run takes an exclusive ``flock`` on the run directory
itself for its whole life; the kernel drops the lock when the process dies,
however it dies, so a killed run never leaves a stale lock. The lock is on
the directory, not on a file in it, because a file can be deleted while it
is locked (it looks stale, naming a dead pid) and the next process would
then lock a new file beside the live holder. ``run.lock`` is only a note of
the holder's pid, for the message; the holder removes it when it ends.

A filesystem that refuses a lock on a directory (NFS emulates ``flock``
with byte-range locks, which need a file open for writing) gets the lock on
``run.lock`` itself instead: there, deleting that file while a run is live
lets a second process in, as it always did.

Read-only commands (``status``, ``report``) do not lock; ``status`` asks
:func:`run_held` whether anyone drives the run, to tell a running stage
from one whose process was killed.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pipeline.run.files import LOCK_NAME
from pipeline.system.atomic import write_text_atomic

_TRIES = 10  # a probe of run_held holds a shared lock for an instant: a writer retries for half a second
_RETRY_S = 0.05


class RunLockedError(RuntimeError):
    """Another process holds the run directory's lock."""


@contextmanager
def run_lock(root: Path) -> Iterator[None]:
    """Hold the lock of the directory ``root`` while the body runs; raise :class:`RunLockedError` if another
    process holds it. ``root/run.lock`` names this process's pid meanwhile."""
    root = Path(root)
    note = root / LOCK_NAME
    fd, on_directory = _open_lockable(root)
    try:
        if not _lock_exclusive(fd):
            holder = note.read_text(encoding="utf-8").strip() if note.is_file() else ""
            raise RunLockedError(
                f"{root} is in use by another selfimprove process (pid {holder or 'unknown'}); "
                "wait for it to end or stop it"
            )
        _write_note(note, fd, on_directory)
        try:
            yield
        finally:
            if on_directory:
                note.unlink(missing_ok=True)
    finally:
        os.close(fd)  # releases the lock


def run_held(root: Path) -> bool:
    """Whether a process holds ``root``'s lock; disturbs no holder (a shared lock, taken and released at once)."""
    root = Path(root)
    if not _locks_directories(root):
        if not (root / LOCK_NAME).is_file():
            return False
        fd = os.open(root / LOCK_NAME, os.O_RDONLY)
    else:
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def _lock_exclusive(fd: int) -> bool:
    """Take the exclusive lock on ``fd``; False when another process keeps it beyond a status probe's instant."""
    for attempt in range(_TRIES):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if attempt + 1 < _TRIES:
                time.sleep(_RETRY_S)
    return False


def _open_lockable(root: Path) -> tuple[int, bool]:
    """A descriptor to lock (the run directory's where its filesystem locks directories, else ``run.lock``'s),
    and whether it is the directory's."""
    if _locks_directories(root):
        return os.open(root, os.O_RDONLY | os.O_DIRECTORY), True
    return os.open(root / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644), False


def _locks_directories(root: Path) -> bool:
    """Whether ``root``'s filesystem takes a ``flock`` on a directory: probed with a shared lock, released at once
    (a writer's exclusive lock answers BlockingIOError, which also says yes)."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
    except BlockingIOError:
        pass
    except OSError:
        return False
    finally:
        os.close(fd)
    return True


def _write_note(note: Path, fd: int, on_directory: bool) -> None:
    """Name this process's pid in ``run.lock``: replaced atomically beside a directory lock; written in place when
    ``run.lock`` is the locked file (a replaced file would be a new, unlocked one)."""
    pid = f"{os.getpid()}\n"
    if on_directory:
        write_text_atomic(note, pid)
        return
    os.ftruncate(fd, 0)
    os.pwrite(fd, pid.encode(), 0)
