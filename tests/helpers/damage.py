"""Damage done to a recorded stage output, as a crash or a hand edit leaves it."""

from __future__ import annotations

from pathlib import Path


def tear_last_line(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: data.rstrip(b"\n").rfind(b"\n") + 40])


def edit_a_line(path: Path) -> None:
    lines = path.read_text().splitlines(keepends=True)
    lines[10] = lines[10].replace('"reference": "1"', '"reference": "2"')
    path.write_text("".join(lines))
