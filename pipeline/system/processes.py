"""Child processes that never outlive the pipeline: the vLLM server and the training launcher.

A child runs in a session (process group) of its own, so that stopping it
also stops every process it spawns, and the terminal's Ctrl-C reaches it
only through :func:`stop_group`. Linux's ``PR_SET_PDEATHSIG`` makes it
receive SIGTERM when the pipeline dies, even by SIGKILL, which no handler in
the pipeline could otherwise catch.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
from pathlib import Path
from typing import IO

_PR_SET_PDEATHSIG = 1


def die_with_parent(expected_parent: int | None = None) -> None:
    """Ask Linux to SIGTERM this process when the thread that started it dies.

    Called between fork and exec for the children the pipeline starts, and by
    grandchildren (the training worker under ``accelerate launch``) for
    themselves. The signal follows the starting *thread*; children are
    started from threads that outlive them (the main thread or the event
    loop's executor). A process that sets this up itself may already have
    been orphaned: ``expected_parent`` (its parent pid, read as early as
    possible) lets it notice and terminate.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if expected_parent is not None and os.getppid() != expected_parent:
        os.kill(os.getpid(), signal.SIGTERM)


def start_in_own_session(
    command: list[str], log: IO[bytes] | None, env: dict[str, str] | None = None
) -> subprocess.Popen:
    """Start ``command`` with stdout and stderr to ``log`` (None: this terminal), dying with the calling thread."""
    return subprocess.Popen(
        command,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=env,
        start_new_session=True,
        preexec_fn=die_with_parent,
    )


def stop_group(process: subprocess.Popen, grace_s: float) -> None:
    """Stop the child's whole process group: SIGTERM, then SIGKILL after ``grace_s``.

    SIGCONT follows the SIGTERM: a stopped process (Ctrl-Z, a debugger)
    acts on SIGTERM only once it runs again, and would otherwise cost the
    whole grace period.
    """
    _signal_group(process.pid, signal.SIGTERM)
    _signal_group(process.pid, signal.SIGCONT)
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        pass
    # Grandchildren may outlive the child: always sweep the group.
    _signal_group(process.pid, signal.SIGKILL)
    process.wait()


def tail(path: Path | None, lines: int = 20) -> str:
    """The last ``lines`` lines of a child's log, for error messages ("" when there is none)."""
    if path is None:
        return ""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
