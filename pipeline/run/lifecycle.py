"""The life of one stage attempt, the same for every stage: done already? start, fail on an exception, complete.

Every stage runs its work inside :func:`stage_attempt`, so that the
manifest's rules hold in one place: a stage outside the run's plan is
refused before anything is written (``selfimprove curate RUN -i 9`` on a
two-iteration run leaves ``manifest.json`` byte-identical), a finished stage
whose outputs are intact is not run again, an exception (Ctrl-C included)
marks the stage failed, and only outputs the stage names are recorded, with
their digests, when it completes. The phases of an attempt's work
(:mod:`pipeline.run.timings`) go to the stage's ``timings.jsonl``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.run.files import TIMINGS_NAME
from pipeline.run.layout import stage_path
from pipeline.run.manifest import Manifest, stage_key
from pipeline.run.timings import recording_into


class StageError(RuntimeError):
    """A stage that cannot run with this run's config or files; the message says what to do."""


class StageNotPlannedError(StageError):
    """A stage that the run's plan does not hold (another iteration, or a stage the method does not have)."""


@dataclass
class StageAttempt:
    """What the stage's body learns (``done``: nothing to do) and tells (``outputs``: the files to record)."""

    done: bool
    outputs: list[Path] = field(default_factory=list)


def check_planned(manifest: Manifest, iteration: int, stage: str) -> None:
    """Refuse, in one line, a stage the run's plan does not hold."""
    if stage_key(iteration, stage) not in manifest.stages:
        planned = ", ".join(manifest.stages)
        raise StageNotPlannedError(
            f"{stage_key(iteration, stage)} is not in the plan of the run in {manifest.run_dir} ({planned})"
        )


@contextmanager
def stage_attempt(manifest: Manifest, iteration: int, stage: str) -> Iterator[StageAttempt]:
    """Run a stage's body as one recorded attempt; the body does its work only when ``attempt.done`` is False.

    The manifest calls the stage done only after the body returned and set
    ``attempt.outputs``, so a crash leaves a stage that the next run resumes.
    """
    check_planned(manifest, iteration, stage)
    if manifest.verified_done(iteration, stage):
        yield StageAttempt(done=True)
        return
    manifest.start(iteration, stage)
    attempt = StageAttempt(done=False)
    timings = stage_path(manifest.run_dir, iteration, stage) / TIMINGS_NAME
    timings.parent.mkdir(parents=True, exist_ok=True)
    try:
        with recording_into(timings):
            yield attempt
    except BaseException as exc:
        manifest.fail(iteration, stage, f"{type(exc).__name__}: {exc}")
        raise
    manifest.complete(iteration, stage, attempt.outputs)
