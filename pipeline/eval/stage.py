"""The ``eval`` stage: iteration K's model on held-out tasks, T turns, n samples, no oracle.

Iteration 0 evaluates the base model, iteration K the model its train stage
wrote. Every task gets n trajectories of exactly T turns: evaluation never
stops at a success and never says whether an answer was right (``binary``
feedback always says "incorrect", ``none`` only asks for a review). When
n < T the parallel baseline mT@t1 needs more first-turn answers than the
trajectories hold, so T extra first-turn samples per task are drawn in one
request; they share their seed with the trajectories' first turn, so the
first parallel answer *is* the trajectory's first answer and the sequential
and parallel curves start from the same point (common random numbers). At
temperature 0 the T answers would be identical, so the first one is reused.

Outputs (in ``iter_K/eval/``, or the ``--out DIR`` of :mod:`pipeline.eval.custom`),
each written atomically:

- ``rollouts.jsonl``: the trajectories (``parallel/rollouts.jsonl``: the
  extra first-turn samples, when drawn);
- ``eval.json``: :func:`pipeline.eval.evaluation.summarize_eval` (transition
  rates included), plus the history window used, the count of parallel
  samples lost to errors and the count of answers the grader could not judge;
- ``curves.json``: m1@tk, mk@t1, p1@tk and pk@t1 for k = 1..T (the report's plot);
- ``task_metrics.jsonl``: every headline figure per task
  (:func:`pipeline.eval.evaluation.task_metrics`), for paired comparisons
  (``selfimprove compare``);
- ``per_task.jsonl``: one row per task, sample and turn.

Votes compare answer keys, merged per task into the grader's equivalence
classes (:meth:`rewards.base.Grader.cluster_keys`) before anything is counted.

Generation resumes like the rollout stage: only missing trajectories run.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

from pipeline.config.settings import PipelineConfig, eval_history_window
from pipeline.engine.server_keeper import ServerKeeper
from pipeline.engine.stage_context import StageContext
from pipeline.eval.evaluation import (
    count_grading_errors,
    count_incomplete,
    per_task_rows,
    prepare_eval_records,
    summarize_curves,
    summarize_eval,
    task_metrics,
)
from pipeline.eval.report import STAGE, ReportError, write_report
from pipeline.rollouts.records import TrajectoryRecord, read_records
from pipeline.rollouts.service import (
    IterationModel,
    collect,
    collected_files,
    iteration_model,
    open_service,
    sampling_params,
)
from pipeline.rollouts.trajectory import RolloutSpec, TrajectoryRunner
from pipeline.run.files import CURVES_NAME, EVAL_NAME, PARALLEL_DIR, PER_TASK_NAME, TASK_METRICS_NAME
from pipeline.run.lifecycle import StageError, stage_attempt
from pipeline.system.atomic import write_json_atomic, write_jsonl_atomic
from pipeline.tasks import Task, load_tasks
from rewards import Grader, get_grader

logger = logging.getLogger(__name__)


class EvalError(StageError, ValueError):
    """An evaluation that cannot run as asked."""


def eval_spec(config: PipelineConfig, adapter: str | None, turns: int, samples: int) -> RolloutSpec:
    """n trajectories per task, T turns each, one answer per turn, never stopped early, no oracle."""
    return RolloutSpec(
        turns=turns,
        samples_per_turn=(1,) * turns,
        trajectories_per_task=samples,
        feedback=config.evaluation.feedback,
        stop_at_success=False,
        history_window=eval_history_window(config),
        sampling=sampling_params(config.evaluation.sampling),
        templates=config.rollout.templates,
        seed=config.run.seed,
        adapter=adapter,
    )


def parallel_spec(config: PipelineConfig, adapter: str | None, turns: int) -> RolloutSpec:
    """T first-turn answers per task in one request: the parallel baseline's samples."""
    return replace(eval_spec(config, adapter, turns, 1), turns=1, samples_per_turn=(turns,), history_window=None)


def evaluate(
    model: IterationModel,
    tasks: list[Task],
    out_dir: Path,
    turns: int,
    samples: int,
    show_progress: bool = True,
    servers: ServerKeeper | None = None,
) -> dict[str, Any]:
    """Generate, grade and summarize; writes the files of the module doc and returns the eval summary.

    ``servers``: the run loop's keeper, whose servers the eval shares with the stages beside it.
    """
    if turns < 2:
        raise EvalError(f"evaluation needs turns >= 2 (nothing to revise with {turns}); got {turns}")
    if not tasks:
        raise EvalError("no eval tasks to evaluate")
    config = model.config
    records, parallel = asyncio.run(_generate(model, tasks, out_dir, turns, samples, show_progress, servers))
    grader = get_grader(config.grader.name, **config.grader.options)
    return write_eval_outputs(
        out_dir, records, parallel, grader, turns, samples, config.run.seed, eval_history_window(config)
    )


def write_eval_outputs(
    out_dir: Path,
    records: list[TrajectoryRecord],
    parallel: list[TrajectoryRecord] | None,
    grader: Grader,
    turns: int,
    samples: int,
    seed: int,
    history_window: int | None,
) -> dict[str, Any]:
    """Summarize graded eval records into the files of the module doc; returns the summary.

    ``parallel``: the parallel baseline's records, None when none were drawn
    (n >= T, or greedy decoding, whose T answers would all be the first).
    Answer keys are first merged into the grader's classes, task by task.
    """
    first_turn = prepare_eval_records(records, parallel, turns, samples, grader.cluster_keys)
    if incomplete := count_incomplete(records, turns):
        logger.warning("%d eval trajectories ended with an error; their missing turns count as wrong", incomplete)
    summary = summarize_eval(records, turns, samples, first_turn, seed=seed)
    summary["incomplete_parallel"] = sum(bool(r.error) for r in parallel or [])
    summary["grading_errors"] = count_grading_errors([*records, *(parallel or [])])
    summary["history_window"] = history_window
    write_jsonl_atomic(out_dir / PER_TASK_NAME, per_task_rows(records, turns))
    write_jsonl_atomic(out_dir / TASK_METRICS_NAME, task_metrics(records, turns, samples, first_turn))
    write_json_atomic(out_dir / CURVES_NAME, summarize_curves(records, turns, samples, first_turn))
    write_json_atomic(out_dir / EVAL_NAME, summary)
    return summary


async def _generate(
    model: IterationModel,
    tasks: list[Task],
    out_dir: Path,
    turns: int,
    samples: int,
    show_progress: bool,
    servers: ServerKeeper | None,
) -> tuple[list[TrajectoryRecord], list[TrajectoryRecord] | None]:
    """The trajectory records and, when n < T at a temperature above 0, the parallel baseline's records.

    None for the latter: no parallel samples were drawn (see :func:`pipeline.eval.evaluation.prepare_eval_records`).
    """
    config, adapter = model.config, model.adapter_name
    async with open_service(model, out_dir, servers) as service:
        runner = TrajectoryRunner(eval_spec(config, adapter, turns, samples), service.learner, service.grade)
        records = read_records(await collect(tasks, runner, out_dir, "eval", show_progress))
        if samples >= turns or config.evaluation.sampling.temperature == 0:
            return records, None
        runner = TrajectoryRunner(parallel_spec(config, adapter, turns), service.learner, service.grade)
        parallel = await collect(tasks, runner, out_dir / PARALLEL_DIR, f"eval m{turns}@t1 samples", show_progress)
        return records, read_records(parallel)


def stage_outputs(out_dir: Path) -> list[Path]:
    """The files the manifest records: the trajectories (the parallel samples' too, when drawn) and the figures."""
    parallel = out_dir / PARALLEL_DIR
    figures = [out_dir / name for name in (EVAL_NAME, CURVES_NAME, PER_TASK_NAME, TASK_METRICS_NAME)]
    return [*collected_files(out_dir), *figures, *([parallel] if parallel.is_dir() else [])]


def run_eval_stage(context: StageContext) -> Path:
    """Evaluate iteration K's model as the run config says; returns ``eval.json``'s path.

    Recorded in the manifest; a rerun of a finished stage does nothing. The
    run's report is rewritten after every eval.
    """
    run, iteration = context.run, context.iteration
    with stage_attempt(run.manifest, iteration, STAGE) as attempt:
        out_dir = run.stage_dir(iteration, STAGE)
        if attempt.done:
            return out_dir / EVAL_NAME
        settings = run.config.evaluation
        tasks = load_tasks(run.config.tasks.eval, "eval")
        model = iteration_model(run, iteration)
        evaluate(model, tasks, out_dir, settings.turns, settings.samples, context.progress, context.servers)
        attempt.outputs = stage_outputs(out_dir)
    try:
        write_report(run.root)
    except ReportError as exc:  # the eval itself is done and recorded; `selfimprove report` can retry
        logger.warning("report not written: %s", exc)
    return out_dir / EVAL_NAME
