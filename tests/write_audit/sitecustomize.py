"""Records which process writes which file under a directory: put this directory first on PYTHONPATH.

Python imports ``sitecustomize`` at startup, so every process started with
that PYTHONPATH (the launcher, each training rank) installs an audit hook
(PEP 578). For each file opened for writing, renamed or removed under
``$WRITE_AUDIT_ROOT``, it appends ``<rank>\t<event>\t<path>`` to
``$WRITE_AUDIT_LOG``; ``<rank>`` is the process's ``RANK`` (set by torchrun),
``-`` for a process without one. Files written by native code without Python's
``open`` (safetensors) are not seen; the renames that publish them are.
"""

from __future__ import annotations

import os
import sys

_ROOT = os.environ.get("WRITE_AUDIT_ROOT")
_LOG = os.environ.get("WRITE_AUDIT_LOG")
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC
_recording = False


def _under_root(path: object) -> str | None:
    if isinstance(path, int):
        return None  # an open file descriptor: its path was seen when it was opened
    name = os.path.abspath(os.fsdecode(path))
    return name if name.startswith(_ROOT + os.sep) else None


def _record(event: str, path: object) -> None:
    global _recording
    name = _under_root(path)
    if name is None or _recording:
        return
    _recording = True  # writing the record opens a file too
    try:
        fd = os.open(_LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{os.environ.get('RANK', '-')}\t{event}\t{name}\n".encode())
        finally:
            os.close(fd)
    finally:
        _recording = False


def _hook(event: str, args: tuple) -> None:
    if event == "open" and args[2] & _WRITE_FLAGS:
        _record("write", args[0])
    elif event == "os.rename":
        _record("rename", args[1])
    elif event in ("os.remove", "shutil.rmtree"):
        _record("remove", args[0])


if _ROOT and _LOG:
    _ROOT = os.path.abspath(_ROOT)
    sys.addaudithook(_hook)
