"""The run loop: eval(0), then each iteration's stages.

RISE iterations go rollout -> curate -> train -> eval; ExIt iterations
train -> eval (GRPO generates while it trains).

The manifest holds the plan (:func:`pipeline.run.manifest.planned_stages`) and
each stage's state; the loop only walks the plan and runs every stage that is
not done. Each stage writes its outputs atomically and resumes its own
partial work, so a run killed at any moment (SIGKILL included) continues
with ``selfimprove resume`` from the first unfinished stage and ends with the
same records as an uninterrupted run.

A damaged run (a done stage's output torn, edited or deleted, so that it no
longer matches its manifest digest) is repaired by :func:`redo_damaged`
before a resume: the damaged stage and every stage built on its outputs
(:func:`stage_inputs`) are done again.
"""

from __future__ import annotations

import os
import shutil
from typing import Callable, Protocol

from pipeline.config.settings import PipelineConfig
from pipeline.run.manifest import STAGES_BY_METHOD, StageState, parse_stage_key, stage_key
from pipeline.run.layout import RunDir
from pipeline.tracking.trackers import sync_tracking

SUPERSEDED_DIR = "superseded"


class StageFn(Protocol):
    def __call__(self, run: RunDir, iteration: int, show_progress: bool = True) -> object: ...


def stage_functions() -> dict[str, StageFn]:
    """The function that runs each stage (imported here: each pulls in heavy libraries)."""
    from pipeline.methods.rise.curate_stage import run_curate_stage
    from pipeline.eval.stage import run_eval_stage
    from pipeline.rollouts.service import run_rollout_stage
    from pipeline.training.launch import run_train_stage

    return {
        "rollout": run_rollout_stage,
        "curate": lambda run, iteration, show_progress=True: run_curate_stage(run, iteration),
        "train": run_train_stage,
        "eval": run_eval_stage,
    }


def run_loop(
    run: RunDir,
    show_progress: bool = True,
    on_stage: Callable[[int, str], None] | None = None,
) -> None:
    """Run every unfinished stage of ``run`` in plan order; ``on_stage(k, stage)`` is told before each starts.

    Each finished stage's figures go to the run's trackers (``run.report_to``),
    and so do those of stages an earlier process finished but did not log.
    """
    functions = stage_functions()
    sync_tracking(run)
    for iteration, stage in run.manifest.unfinished():
        if on_stage is not None:
            on_stage(iteration, stage)
        functions[stage](run, iteration, show_progress=show_progress)
        sync_tracking(run)



def stage_inputs(config: PipelineConfig, iteration: int, stage: str) -> list[tuple[int, str]]:
    """The stages whose outputs stage ``(iteration, stage)`` reads, so whose redo makes it stale.

    Rollout and eval serve the model of a train stage (iteration K-1's and
    K's); curate reads its rollouts and, accumulating, the previous training
    set; train reads its curated set (RISE) and the previous adapter when it
    continues it (ExIt always, RISE with ``train_from: previous``).
    """
    from pipeline.training.launch import continues_previous

    previous_model = [(iteration - 1, "train")] if iteration > 1 else []
    if stage == "rollout":
        return previous_model
    if stage == "curate":
        accumulates = getattr(config.method, "accumulate", False) and iteration > 1
        return [(iteration, "rollout"), *([(iteration - 1, "curate")] if accumulates else [])]
    if stage == "train":
        curated = [(iteration, "curate")] if "curate" in STAGES_BY_METHOD[config.method.name] else []
        return [*curated, *(previous_model if continues_previous(config.method) else [])]
    return [(iteration, "train")] if iteration >= 1 else []


def redo_damaged(run: RunDir) -> dict[str, str]:
    """Make every damaged done stage, and every stage built on one, pending again; returns stage key -> why.

    Their directories move to ``superseded/iter_K/<stage>`` first (replacing
    an older copy there), so that the redo starts clean instead of resuming
    from damaged or stale files (a rollout's records, a train stage's
    checkpoints), and the old files stay for a look. A crash between the
    moves and the manifest's save leaves done stages with missing files:
    damaged, so the next resume redoes them again.
    """
    redo: dict[tuple[int, str], str] = {}
    for key in run.manifest.stages:
        iteration, stage = parse_stage_key(key)
        if problems := run.manifest.damage(iteration, stage):
            redo[(iteration, stage)] = "; ".join(problems)
        elif built_on := [source for source in stage_inputs(run.config, iteration, stage) if source in redo]:
            redo[(iteration, stage)] = f"built on {stage_key(*built_on[0])}, which is redone"
    started = {k: v for k, v in redo.items() if run.manifest.record(*k).state is not StageState.PENDING}
    for iteration, stage in started:
        _set_aside(run, iteration, stage)
        run.manifest.reset(iteration, stage, f"redone: {started[(iteration, stage)]}")
    if started:
        run.manifest.save()
    return {stage_key(*k): reason for k, reason in started.items()}


def _set_aside(run: RunDir, iteration: int, stage: str) -> None:
    source = run.root / f"iter_{iteration}" / stage
    if not source.exists():
        return
    target = run.root / SUPERSEDED_DIR / f"iter_{iteration}" / stage
    shutil.rmtree(target, ignore_errors=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(source, target)
