"""The ``rollout`` stage: iteration K's model generates graded revision trajectories.

Iteration K collects with the model of iteration K-1: the base model for
K = 1, else the adapter trained in ``iter_{K-1}/train/adapter``. The stage
is recorded in the manifest; a rerun of a finished stage does nothing and a
rerun of an interrupted one completes only the missing trajectories.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from pipeline.adapters import adapter_name, check_adapter_dir
from pipeline.backends import open_learner, open_teacher
from pipeline.config import PipelineConfig, SamplingSection, TaskSourceSection
from pipeline.generation import SamplingParams
from pipeline.progress import RolloutProgress
from pipeline.rollout import GradeFn, RolloutSpec, RolloutWriter, TrajectoryRunner, trajectory_key
from pipeline.run_dir import RunDir
from pipeline.tasks import Task, get_task_source
from rewards import get_grader
from rewards.pool import GradingPool

STAGE = "rollout"


def load_tasks(section: TaskSourceSection, split: str) -> list[Task]:
    tasks = get_task_source(section.source, **section.options).load(split)
    return tasks[: section.limit] if section.limit else tasks


def sampling_params(section: SamplingSection) -> SamplingParams:
    return SamplingParams(section.temperature, section.top_p, section.max_tokens, tuple(section.stop))


def collection_spec(config: PipelineConfig, adapter: str | None) -> RolloutSpec:
    rollout = config.rollout
    return RolloutSpec(
        turns=rollout.turns,
        samples_per_turn=rollout.samples_per_turn,
        trajectories_per_task=1,
        feedback=rollout.feedback,
        stop_at_success=rollout.stop_at_success,
        history_window=rollout.history_window,
        sampling=sampling_params(rollout.sampling),
        templates=rollout.templates,
        seed=config.run.seed,
        adapter=adapter,
    )


def model_adapter(run: RunDir, iteration: int) -> tuple[str, Path] | None:
    """The adapter that holds iteration ``iteration``'s model (None: the base model)."""
    if iteration < 1:
        return None
    path = run.root / f"iter_{iteration}" / "train" / "adapter"
    check_adapter_dir(path, run.config.rollout.server.max_lora_rank)
    return adapter_name(run.config.run.name, iteration), path


def pooled_grading(pool: GradingPool, name: str, options: dict) -> GradeFn:
    """A grade function that runs the configured grader in the pool's worker processes."""
    grader = get_grader(name, **options)
    return lambda response, reference: pool.submit(grader, response, reference)


async def collect(
    tasks: list[Task], runner: TrajectoryRunner, out_dir: Path, description: str, show_progress: bool = True
) -> Path:
    """Run every missing trajectory of ``tasks`` and write ``rollouts.jsonl`` in task order."""
    per_task = runner.spec.trajectories_per_task
    writer = RolloutWriter(out_dir)
    order = [trajectory_key(t.task_id, s) for t in tasks for s in range(per_task)]
    todo = [(t, s) for t in tasks for s in range(per_task) if not writer.has(trajectory_key(t.task_id, s))]
    try:
        with RolloutProgress(description, len(order), len(order) - len(todo), enabled=show_progress) as progress:

            async def one(task: Task, sample: int) -> None:
                record = await runner.run(task, sample)
                writer.append(record)
                progress.update(record)

            async with asyncio.TaskGroup() as group:
                for task, sample in todo:
                    group.create_task(one(task, sample))
        return writer.finalize(order)
    finally:
        writer.close()


def run_rollout_stage(run: RunDir, iteration: int, show_progress: bool = True) -> Path:
    config = run.config
    out_dir = run.stage_dir(iteration, STAGE)
    if run.manifest.is_done(iteration, STAGE):
        return out_dir / "rollouts.jsonl"
    run.manifest.start(iteration, STAGE)
    try:
        adapter = model_adapter(run, iteration - 1)
        tasks = load_tasks(config.tasks.train, "train")
        spec = collection_spec(config, adapter[0] if adapter else None)
        path = asyncio.run(_collect_with_service(config, tasks, spec, adapter, out_dir, iteration, show_progress))
    except BaseException as exc:
        run.manifest.fail(iteration, STAGE, f"{type(exc).__name__}: {exc}")
        raise
    run.manifest.complete(iteration, STAGE, [path])
    return path


async def _collect_with_service(
    config: PipelineConfig,
    tasks: list[Task],
    spec: RolloutSpec,
    adapter: tuple[str, Path] | None,
    out_dir: Path,
    iteration: int,
    show_progress: bool,
) -> Path:
    with GradingPool(config.grader.workers, config.grader.timeout_s) as pool:
        async with open_learner(config, out_dir) as learner, open_teacher(config) as teacher:
            if adapter is not None:
                await learner.load_adapter(*map(str, adapter))
            grade = pooled_grading(pool, config.grader.name, config.grader.options)
            runner = TrajectoryRunner(spec, learner, grade, teacher)
            return await collect(tasks, runner, out_dir, f"rollout iter {iteration}", show_progress)
