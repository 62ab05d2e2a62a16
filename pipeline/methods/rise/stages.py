"""RISE's rollout and train stages, which its class's stages run (:mod:`pipeline.methods.rise.method`).

The rollout stage collects multi-turn revision trajectories with iteration
K-1's model; train launches the weighted SFT worker
(:mod:`pipeline.methods.rise.training`) on the curated set
(:mod:`pipeline.methods.rise.curate_stage`).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from pipeline.config.settings import PipelineConfig
from pipeline.engine.stage_context import StageContext
from pipeline.methods.rise.curate_stage import training_set
from pipeline.rollouts.service import (
    IterationModel,
    collect,
    collected_files,
    iteration_model,
    open_service,
    sampling_params,
)
from pipeline.rollouts.trajectory import RolloutSpec, TrajectoryRunner
from pipeline.run.files import ROLLOUTS_NAME
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


def run_rollout_stage(context: StageContext) -> Path:
    """Collect iteration K's trajectories with iteration K-1's model; returns ``rollouts.jsonl``.

    A rerun of a finished stage does nothing; a rerun of an interrupted one
    completes only the missing trajectories.
    """
    run, iteration = context.run, context.iteration
    with stage_attempt(run.manifest, iteration, ROLLOUT) as attempt:
        path = run.stage_dir(iteration, ROLLOUT) / ROLLOUTS_NAME
        if not attempt.done:
            model = iteration_model(run, iteration - 1)
            tasks = load_tasks(run.config.tasks.train, "train")
            spec = collection_spec(run.config, model.adapter_name)
            description = f"rollout iter {iteration}"
            path = asyncio.run(_collect(model, tasks, spec, path.parent, description, context))
            attempt.outputs = collected_files(path.parent)
    return path


async def _collect(
    model: IterationModel, tasks: list[Task], spec: RolloutSpec, out_dir: Path, description: str, context: StageContext
) -> Path:
    async with open_service(model, out_dir, context.servers, model.config.method.teacher) as service:
        runner = TrajectoryRunner(spec, service.learner, service.grade, service.teacher)
        return await collect(tasks, runner, out_dir, description, context.progress)


def run_train_stage(context: StageContext) -> Path:
    """Train iteration K's adapter (or model) on its curated set; returns its directory."""
    run, iteration = context.run, context.iteration

    def train() -> list[Path]:
        training_set(run, iteration)
        run_training(run, iteration, context.progress)
        return output_files(run, iteration)

    return train_stage(run, iteration, train)
