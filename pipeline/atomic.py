"""Atomic file writes: a temp file in the target's directory, fsync, rename.

Every stage output and the manifest go through these helpers, so a crash or a
SIGKILL at any moment leaves either the previous file or the new one on disk,
never a torn mix.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import IO, Any, Iterable


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
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


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Read a JSONL file; a torn last line (a crash mid-append) is dropped."""
    records: list[dict[str, Any]] = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if not line.endswith("\n"):
                break
            if line.strip():
                records.append(json.loads(line))
    return records


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
