"""The run loop: eval(0), then each iteration's stages.

Each method declares its iterations' stages (RISE: rollout -> curate ->
train -> eval; ExIt: train -> eval) and the functions that run them: the
run's ``method`` section is its method (:mod:`pipeline.methods.base`).

The manifest holds the plan (:func:`pipeline.run.manifest.planned_stages`) and
each stage's state; the loop only walks the plan and runs every stage that is
not done. Each stage writes its outputs atomically and resumes its own
partial work, so a run killed at any moment (SIGKILL included) continues
with ``selfimprove resume`` from the first unfinished stage and ends with the
same records as an uninterrupted run.

A damaged run (a done stage's output torn, edited or deleted, so that it no
longer matches its manifest digest) is repaired by :func:`redo_damaged`
before a resume: the damaged stage and every stage built on its outputs
(the method section's ``stage_inputs``) are done again.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable

from pipeline.engine.server_keeper import ServerKeeper
from pipeline.engine.stage_context import StageContext
from pipeline.run.files import SUPERSEDED_DIR
from pipeline.run.layout import RunDir, stage_path
from pipeline.run.manifest import StageState, parse_stage_key, stage_key
from pipeline.runner.stage_figures import stage_metrics
from pipeline.tracking.trackers import sync_tracking


def run_loop(
    run: RunDir,
    show_progress: bool = True,
    on_stage: Callable[[int, str], None] | None = None,
) -> None:
    """Run every unfinished stage of ``run`` in plan order; ``on_stage(k, stage)`` is told before each starts.

    Each finished stage's figures go to the run's trackers (``run.report_to``),
    and so do those of stages an earlier process finished but did not log.
    Consecutive stages that serve the same model share its servers (iteration
    K's eval and iteration K+1's rollout); a resumed run starts the ones it needs.
    """
    method = run.config.method
    sync_tracking(run, stage_metrics)
    with ServerKeeper() as servers:
        for iteration, stage in run.manifest.unfinished():
            if stage not in method.SERVING_STAGES:
                servers.release()
            if on_stage is not None:
                on_stage(iteration, stage)
            method.run_stage(stage, StageContext(run, iteration, servers, show_progress))
            sync_tracking(run, stage_metrics)


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
        elif built_on := [source for source in run.config.method.stage_inputs(iteration, stage) if source in redo]:
            redo[(iteration, stage)] = f"built on {stage_key(*built_on[0])}, which is redone"
    started = {k: v for k, v in redo.items() if run.manifest.record(*k).state is not StageState.PENDING}
    for iteration, stage in started:
        _set_aside(run, iteration, stage)
        run.manifest.reset(iteration, stage, f"redone: {started[(iteration, stage)]}")
    if started:
        run.manifest.save()
    return {stage_key(*k): reason for k, reason in started.items()}


def _set_aside(run: RunDir, iteration: int, stage: str) -> None:
    source = stage_path(run.root, iteration, stage)
    if not source.exists():
        return
    target = stage_path(run.root / SUPERSEDED_DIR, iteration, stage)
    shutil.rmtree(target, ignore_errors=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(source, target)
