"""Where a stage's wall time goes: named phases appended to the stage's ``timings.jsonl``.

A stage's wall time (the manifest's ``started_at`` to ``finished_at``) is
spent generating, training, starting servers, merging or converting models,
and on everything else (loading tasks, reading and writing files, Python).
Code that does one of the named things wraps it in :func:`phase`; the stage
lifecycle (:func:`pipeline.run.lifecycle.stage_attempt`) says which stage's
file the phases go to. ``bench/overhead.py`` adds them up per stage against
the manifest, and what no phase covers is the orchestration's own overhead.

Phases record wall seconds and may nest (a merge inside training): the
reader subtracts nested phases from the enclosing one. Outside a stage (a
benchmark, a test calling library code) :func:`phase` records nothing.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from pipeline.run.files import TIMINGS_NAME
from pipeline.run.manifest import Manifest, StageState
from pipeline.system.atomic import read_jsonl

# The stage's timings file, for processes a stage launches (the training worker) and for this one.
TIMINGS_ENV = "SELFIMPROVE_TIMINGS_FILE"
PHASES = ("server_start", "generation", "training", "merge", "conversion")

_CURRENT: ContextVar[Path | None] = ContextVar("timings_file", default=None)


def current_file() -> Path | None:
    """The timings file of the stage running in this process (or that launched it), if any."""
    if (path := _CURRENT.get()) is not None:
        return path
    return Path(env) if (env := os.environ.get(TIMINGS_ENV)) else None


def timings_env() -> dict[str, str]:
    """The environment that sends a launched process's phases to this stage's file."""
    path = current_file()
    return {} if path is None else {TIMINGS_ENV: str(path)}


@contextmanager
def recording_into(path: Path) -> Iterator[None]:
    """Send the phases of the code inside the block to ``path``."""
    token = _CURRENT.set(path)
    try:
        yield
    finally:
        _CURRENT.reset(token)


@contextmanager
def phase(name: str) -> Iterator[None]:
    """Time the block as phase ``name`` of the current stage (one JSON line, written when the block ends).

    A block that raises is recorded too: its time was spent all the same.
    """
    if name not in PHASES:
        raise ValueError(f"unknown phase {name!r}; known: {', '.join(PHASES)}")
    path = current_file()
    started, wall_start = time.monotonic(), time.time()
    try:
        yield
    finally:
        if path is not None:
            line = {"phase": name, "start": wall_start, "seconds": time.monotonic() - started, "pid": os.getpid()}
            with open(path, "a", encoding="utf-8") as handle:  # one short line per write: appends stay whole
                handle.write(json.dumps(line) + "\n")


@dataclass(frozen=True)
class StageTimes:
    """One finished stage's span (epoch seconds) and its phases (seconds), ``rest`` being what no phase covers."""

    stage: str
    start: float
    end: float
    phases: dict[str, float]
    server_starts: int

    @property
    def wall(self) -> float:
        return self.end - self.start

    @property
    def rest(self) -> float:
        return max(0.0, self.wall - sum(self.phases.values()))


def stage_times(run_root: Path) -> list[StageTimes]:
    """Every done stage of the run in ``run_root``, in plan order, from its manifest and ``timings.jsonl`` files.

    Only the last attempt counts (the phases that started after the
    manifest's ``started_at``), as the wall time does. A merge runs inside
    training, so it is taken out of training's time.
    """
    out = []
    for key, record in Manifest.load(Path(run_root)).stages.items():
        if record.state is not StageState.DONE or not record.started_at or not record.finished_at:
            continue
        start = datetime.fromisoformat(record.started_at).timestamp()
        path = Path(run_root) / key / TIMINGS_NAME
        lines = [line for line in read_jsonl(path) if line["start"] >= start - 1] if path.is_file() else []
        phases = {name: sum(line["seconds"] for line in lines if line["phase"] == name) for name in PHASES}
        phases["training"] = max(0.0, phases["training"] - phases["merge"])
        starts = sum(1 for line in lines if line["phase"] == "server_start")
        end = datetime.fromisoformat(record.finished_at).timestamp()
        out.append(StageTimes(key, start, end, {k: v for k, v in phases.items() if v > 0}, starts))
    return out
