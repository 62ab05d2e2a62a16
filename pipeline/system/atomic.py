"""Atomic file writes: a temp file in the target's directory, fsync, rename.

Every stage output and the manifest go through these helpers, so a crash or a
SIGKILL at any moment leaves either the previous file or the new one on disk,
never a torn mix. Files and directories get the modes ``open()`` and
``mkdir()`` would give them (0o666 and 0o777 less the umask), not the 0600
and 0700 of :mod:`tempfile`.

Readers fail loudly: a JSONL line or JSON file that does not parse is a
:class:`CorruptFileError` naming the file and the line.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any


class CorruptFileError(ValueError):
    """A file that does not parse as what it should hold; the message names the file (and line) and the problem."""


def current_umask() -> int:
    """The process's umask, read without changing it where Linux allows (``/proc/self/status``).

    Elsewhere it is read by setting and restoring it, which is not atomic
    with respect to other threads creating files at that instant.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def make_temp_dir(parent: str | Path, prefix: str) -> Path:
    """A new staging directory in ``parent`` with the mode ``mkdir`` would give it (tempfile's is 0700)."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    path.chmod(0o777 & ~current_umask())
    return path


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def write_text_atomic(path: str | Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False, ensure_ascii=False) + "\n")


def write_jsonl_atomic(path: str | Path, records: Iterable[dict[str, Any]]) -> None:
    lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    write_text_atomic(path, lines)


def append_jsonl_durably(handle: IO[str], records: Iterable[dict[str, Any]]) -> None:
    """Append records to an open JSONL file and fsync: once this returns they survive a crash."""
    for record in records:
        handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    handle.flush()
    os.fsync(handle.fileno())


def publish_dir(staged: str | Path, target: str | Path) -> None:
    """Move a fully written directory to ``target`` with one rename, after syncing its files.

    A directory written by a library (a saved model) cannot be made
    atomically file by file; staging it beside the target and renaming it
    makes it appear whole or not at all. An existing ``target`` (left by an
    attempt whose completion was never recorded) is replaced.
    """
    staged, target = Path(staged), Path(target)
    for path in staged.rglob("*"):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
    shutil.rmtree(target, ignore_errors=True)
    os.replace(staged, target)
    _fsync_dir(target.parent)


def read_jsonl(path: str | Path, whole: bool = False) -> list[dict[str, Any]]:
    """Read a JSONL file; a line that does not parse is a :class:`CorruptFileError` naming file and line.

    A torn last line (no newline) is what a crash mid-append leaves in an
    append log, so by default it is dropped. Pass ``whole=True`` for a file
    written in one atomic write: there a torn last line means damage, and is
    an error too.
    """
    records: list[dict[str, Any]] = []
    try:
        with open(path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.endswith("\n") and not whole:
                    break
                if line.strip():
                    records.append(_json_line(path, number, line))
    except UnicodeDecodeError as exc:
        raise CorruptFileError(f"{path}: not UTF-8 text (byte offset {exc.start})") from None
    return records


def _json_line(path: str | Path, number: int, line: str) -> dict[str, Any]:
    """One JSONL record, which must be a JSON object."""
    torn = "" if line.endswith("\n") else "; the last line is cut short"
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise CorruptFileError(f"{path}:{number}: invalid JSON ({exc.msg} at column {exc.colno}{torn})") from None
    if not isinstance(record, dict):
        raise CorruptFileError(f"{path}:{number}: expected a JSON object, got {type(record).__name__}{torn}")
    return record


def read_json(path: str | Path) -> Any:
    """Read a JSON file; one that does not parse is a :class:`CorruptFileError` naming it and the spot."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise CorruptFileError(f"{path}: invalid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})") from None
    except UnicodeDecodeError as exc:
        raise CorruptFileError(f"{path}: not UTF-8 text (byte offset {exc.start})") from None


def file_digest(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
