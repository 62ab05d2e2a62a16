"""The run loop: eval(0), then each iteration's stages.

RISE iterations go rollout -> curate -> train -> eval; ExIt iterations
train -> eval (GRPO generates while it trains).

The manifest holds the plan (:func:`pipeline.manifest.planned_stages`) and
each stage's state; the loop only walks the plan and runs every stage that is
not done. Each stage writes its outputs atomically and resumes its own
partial work, so a run killed at any moment (SIGKILL included) continues
with ``selfimprove resume`` from the first unfinished stage and ends with the
same records as an uninterrupted run.
"""

from __future__ import annotations

from typing import Callable, Protocol

from pipeline.run_dir import RunDir
from pipeline.tracking import sync_tracking


class StageFn(Protocol):
    def __call__(self, run: RunDir, iteration: int, show_progress: bool = True) -> object: ...


def stage_functions() -> dict[str, StageFn]:
    """The function that runs each stage (imported here: each pulls in heavy libraries)."""
    from pipeline.curate_stage import run_curate_stage
    from pipeline.eval_stage import run_eval_stage
    from pipeline.rollout_stage import run_rollout_stage
    from pipeline.train_stage import run_train_stage

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

