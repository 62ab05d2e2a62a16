"""The train stage's progress: the worker's trainer appends it to a file, the launching process follows it.

``iter_K/train/progress.jsonl`` holds one line when training starts (or
resumes: the step of the checkpoint it resumed from) and one after each
optimizer step::

    {"step": 4, "total": 12, "start": true}
    {"step": 5, "total": 12, "start": false}

The main worker process writes it (a trainer callback,
:class:`~pipeline.training.trainer.ProgressWriter`), and the stage reads it
for its progress bar (:class:`ProgressFollower`): a file of its own, not
lines scraped from the log, so that whatever else the trainer, tqdm or a
library prints there cannot be taken for, or hide, a step. Every attempt
appends, so the file also says where each attempt started. Both sides
import this module, so it imports nothing heavy.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from pipeline.run.files import PROGRESS_NAME
from pipeline.run.layout import TRAIN_STAGE, RunDir


@dataclass(frozen=True)
class StepProgress:
    """The optimizer steps done of the training's total; ``start`` marks the step an attempt began at."""

    step: int
    total: int
    start: bool = False


def progress_path(run: RunDir, iteration: int) -> Path:
    return run.stage_dir(iteration, TRAIN_STAGE) / PROGRESS_NAME


def append_progress(path: Path, progress: StepProgress) -> None:
    """One line, written and flushed at once: a reader sees it whole or, until its newline, not at all."""
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(asdict(progress)) + "\n")


class ProgressFollower:
    """The newest step appended to the progress file since the follower was made, without rereading the file.

    The lines of earlier attempts are skipped; a line not yet ended by its
    newline waits for the next read.
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        self._offset = path.stat().st_size if path.exists() else 0
        self._pending = b""

    def latest(self) -> StepProgress | None:
        if not self._path.exists():
            return None
        with open(self._path, "rb") as handle:
            handle.seek(self._offset)
            data = self._pending + handle.read()
            self._offset = handle.tell()
        complete, _, self._pending = data.rpartition(b"\n")
        lines = complete.splitlines()
        return StepProgress(**json.loads(lines[-1])) if lines else None
