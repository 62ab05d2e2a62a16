"""The ``rollout`` stage: iteration K's model generates graded revision trajectories.

Iteration K collects with the model of iteration K-1: the base model for
K = 1, else what iteration K-1's train stage wrote (:func:`iteration_model`). The stage
is recorded in the manifest; a rerun of a finished stage does nothing and a
rerun of an interrupted one completes only the missing trajectories.
"""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import AsyncIterator

from pipeline.adapters import AdapterError, adapter_name, check_adapter_dir
from pipeline.atomic import write_json_atomic
from pipeline.backends import open_learner, open_teacher
from pipeline.config import PipelineConfig, SamplingSection
from pipeline.generation import GenerationBackend, SamplingParams
from pipeline.progress import RolloutProgress
from pipeline.rollout import GradeFn, RolloutSpec, RolloutWriter, TrajectoryRunner, trajectory_key
from pipeline.run_dir import RunDir
from pipeline.tasks import Task, load_tasks
from pipeline.tracking import THROUGHPUT_NAME
from rewards import get_grader
from rewards.pool import GradingPool

STAGE = "rollout"


def sampling_params(section: SamplingSection) -> SamplingParams:
    return SamplingParams(section.temperature, section.top_p, section.max_tokens, tuple(section.stop))


def collection_spec(config: PipelineConfig, adapter: str | None) -> RolloutSpec:
    rollout = config.rollout
    return RolloutSpec(
        turns=rollout.turns,
        samples_per_turn=rollout.sample_schedule,
        trajectories_per_task=1,
        feedback=rollout.feedback,
        stop_at_success=rollout.stop_at_success,
        history_window=rollout.history_window,
        sampling=sampling_params(rollout.sampling),
        templates=rollout.templates,
        seed=config.run.seed,
        adapter=adapter,
    )


@dataclass(frozen=True)
class IterationModel:
    """What serves iteration K's model: the run's config (whose ``model`` may
    point at a fully fine-tuned checkpoint) and the LoRA adapter to load, if any."""

    config: PipelineConfig
    adapter: tuple[str, Path] | None = None

    @property
    def adapter_name(self) -> str | None:
        return self.adapter[0] if self.adapter else None


def iteration_model(run: RunDir, iteration: int) -> IterationModel:
    """Iteration ``iteration``'s model: the base model for 0, else what its train stage wrote.

    LoRA runs write ``iter_K/train/adapter``, served by name on the base
    model's server, and with ``rollout.serve_merged`` also
    ``iter_K/train/merged``; full fine-tuning writes ``iter_K/train/model``.
    A checkpoint is served by starting the server on it instead of the base.
    """
    if iteration < 1:
        return IterationModel(run.config)
    run.manifest.check_intact(iteration, "train")  # a deleted or changed adapter is never served
    train_dir = run.root / f"iter_{iteration}" / "train"
    if run.config.training.finetune == "full":
        return _checkpoint_model(run.config, train_dir / "model")
    if run.config.rollout.serve_merged:
        return _checkpoint_model(run.config, train_dir / "merged")
    path = check_adapter_dir(train_dir / "adapter", run.config.rollout.server.max_lora_rank)
    return IterationModel(run.config, (adapter_name(run.config.run.name, iteration), path))


def _checkpoint_model(config: PipelineConfig, model_dir: Path) -> IterationModel:
    """Serve ``model_dir`` in place of the configured base model."""
    if not (model_dir / "config.json").is_file():
        raise AdapterError(f"the trained model to serve is missing: no {model_dir}/config.json")
    if config.rollout.urls:
        raise AdapterError(f"rollout.urls servers cannot serve the checkpoint {model_dir}; unset rollout.urls")
    model = config.model.model_copy(update={"name_or_path": str(model_dir)})
    return IterationModel(config.model_copy(update={"model": model}))


def pooled_grading(pool: GradingPool, name: str, options: dict) -> GradeFn:
    """A grade function that grades each batch with the configured grader where it belongs (inline or the pool's workers)."""
    return partial(pool.submit, get_grader(name, **options))


async def collect(
    tasks: list[Task], runner: TrajectoryRunner, out_dir: Path, description: str, show_progress: bool = True
) -> Path:
    """Run every missing trajectory of ``tasks`` and write ``rollouts.jsonl`` in task order.

    ``throughput.json`` beside it holds this attempt's generation speed, which the trackers log.
    """
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
        path = writer.finalize(order)
        if todo:  # an attempt that only finalized what an earlier one generated measured nothing
            write_json_atomic(out_dir / THROUGHPUT_NAME, progress.throughput())
        return path
    finally:
        writer.close()


@dataclass
class Service:
    """An open rollout service: the learner, the optional teacher, and pooled grading."""

    learner: GenerationBackend
    teacher: GenerationBackend | None
    grade: GradeFn


@asynccontextmanager
async def open_service(model: IterationModel, log_dir: Path) -> AsyncIterator[Service]:
    """Start (or connect to) the learner's backend with ``model``'s adapter loaded, plus the grading pool.

    Everything is closed on exit, errors and Ctrl-C included.
    """
    config = model.config
    with GradingPool(config.grader.workers, config.grader.timeout_s) as pool:
        async with open_learner(config, log_dir) as learner, open_teacher(config) as teacher:
            if model.adapter is not None:
                await learner.load_adapter(*map(str, model.adapter))
            yield Service(learner, teacher, pooled_grading(pool, config.grader.name, config.grader.options))


def run_rollout_stage(run: RunDir, iteration: int, show_progress: bool = True) -> Path:
    out_dir = run.stage_dir(iteration, STAGE)
    if run.manifest.verified_done(iteration, STAGE):
        return out_dir / "rollouts.jsonl"
    run.manifest.start(iteration, STAGE)
    try:
        model = iteration_model(run, iteration - 1)
        tasks = load_tasks(run.config.tasks.train, "train")
        spec = collection_spec(run.config, model.adapter_name)
        path = asyncio.run(_collect(model, tasks, spec, out_dir, f"rollout iter {iteration}", show_progress))
    except BaseException as exc:
        run.manifest.fail(iteration, STAGE, f"{type(exc).__name__}: {exc}")
        raise
    run.manifest.complete(iteration, STAGE, [path])
    return path


async def _collect(
    model: IterationModel, tasks: list[Task], spec: RolloutSpec, out_dir: Path, description: str, show_progress: bool
) -> Path:
    async with open_service(model, out_dir) as service:
        runner = TrajectoryRunner(spec, service.learner, service.grade, service.teacher)
        return await collect(tasks, runner, out_dir, description, show_progress)
