"""RISE's stages: rollout -> curate -> train -> eval, the functions its plan runs (the registry's entry).

The rollout stage collects multi-turn revision trajectories with iteration
K-1's model; curate builds the weighted SFT set
(:mod:`pipeline.methods.rise.curate_stage`); train launches the weighted
SFT worker (:mod:`pipeline.methods.rise.training`) on it; eval is the
shared eval stage.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from pipeline.config.settings import PipelineConfig
from pipeline.eval.stage import run_eval_stage
from pipeline.methods.base import Method, counts_cell
from pipeline.methods.rise.curate_stage import SUMMARY_NAME, run_curate_stage, training_set
from pipeline.rollouts.service import (
    IterationModel,
    collect,
    collected_files,
    iteration_model,
    open_service,
    sampling_params,
)
from pipeline.rollouts.trajectory import ROLLOUTS_NAME, RolloutSpec, TrajectoryRunner
from pipeline.run.layout import RunDir
from pipeline.run.lifecycle import stage_attempt
from pipeline.tasks import Task, load_tasks
from pipeline.training.launch import output_files, run_training, train_stage

ROLLOUT = "rollout"


def collection_spec(config: PipelineConfig, adapter: str | None) -> RolloutSpec:
    rollout, method = config.rollout, config.method
    return RolloutSpec(
        turns=method.turns,
        samples_per_turn=method.sample_schedule,
        trajectories_per_task=1,
        feedback=method.feedback,
        stop_at_success=method.stop_at_success,
        history_window=rollout.history_window,
        sampling=sampling_params(rollout.sampling),
        templates=rollout.templates,
        seed=config.run.seed,
        adapter=adapter,
        rationalize=method.rationalize,
    )


def run_rollout_stage(run: RunDir, iteration: int, show_progress: bool = True) -> Path:
    """Collect iteration ``iteration``'s trajectories with iteration K-1's model; returns ``rollouts.jsonl``.

    A rerun of a finished stage does nothing; a rerun of an interrupted one
    completes only the missing trajectories.
    """
    with stage_attempt(run.manifest, iteration, ROLLOUT) as attempt:
        path = run.stage_dir(iteration, ROLLOUT) / ROLLOUTS_NAME
        if not attempt.done:
            model = iteration_model(run, iteration - 1)
            tasks = load_tasks(run.config.tasks.train, "train")
            spec = collection_spec(run.config, model.adapter_name)
            path = asyncio.run(_collect(model, tasks, spec, path.parent, f"rollout iter {iteration}", show_progress))
            attempt.outputs = collected_files(path.parent)
    return path


async def _collect(
    model: IterationModel, tasks: list[Task], spec: RolloutSpec, out_dir: Path, description: str, show_progress: bool
) -> Path:
    async with open_service(model, out_dir, model.config.method.teacher) as service:
        runner = TrajectoryRunner(spec, service.learner, service.grade, service.teacher)
        return await collect(tasks, runner, out_dir, description, show_progress)


def run_train_stage(run: RunDir, iteration: int, show_progress: bool = True) -> Path:
    """Train iteration ``iteration``'s adapter (or model) on its curated set; returns its directory."""

    def train() -> list[Path]:
        training_set(run, iteration)
        run_training(run, iteration, show_progress)
        return output_files(run, iteration)

    return train_stage(run, iteration, train)


def _data_row(summary: dict[str, Any]) -> list[str]:
    return [str(summary["examples"]), counts_cell(summary["by_turn"], "turn "), counts_cell(summary["by_source"])]


METHOD = Method(
    stages={
        "rollout": run_rollout_stage,
        "curate": lambda run, iteration, show_progress=True: run_curate_stage(run, iteration),
        "train": run_train_stage,
        "eval": run_eval_stage,
    },
    serving_stages=frozenset({"rollout", "eval"}),
    title="RISE (reward-weighted SFT on multi-turn revisions)",
    data_summary=("curate", SUMMARY_NAME),
    data_columns=("examples", "by turn", "by source"),
    data_row=_data_row,
)
