"""The rollout service a stage opens: iteration K's model served (with its adapter), graded, and collected.

RISE's rollout stage and the eval stage both generate trajectories this way;
ExIt's groups use its sampling and grading. Which model serves iteration K
is decided here only (:func:`iteration_model`): the base model for 0, else
what iteration K's train stage wrote.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from pipeline.config.choices import Finetune
from pipeline.config.sections import TeacherSection
from pipeline.config.settings import PipelineConfig, SamplingSection
from pipeline.engine.adapters import AdapterError, adapter_name, check_adapter_dir
from pipeline.engine.backends import open_learner, open_teacher
from pipeline.engine.generation import GenerationBackend, SamplingParams
from pipeline.engine.server_keeper import ServerKeeper
from pipeline.rollouts.progress import RolloutProgress
from pipeline.rollouts.trajectory import GradeFn, RolloutWriter, TrajectoryRunner, trajectory_key
from pipeline.run.files import ROLLOUTS_NAME, THROUGHPUT_NAME
from pipeline.run.layout import RunDir, final_dir, merged_dir
from pipeline.run.timings import phase
from pipeline.system.atomic import write_json_atomic
from pipeline.tasks import Task
from rewards import get_grader
from rewards.pool import GradingPool, preloaded


def sampling_params(section: SamplingSection) -> SamplingParams:
    return SamplingParams(section.temperature, section.top_p, section.max_tokens, tuple(section.stop))


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
    if run.config.training.finetune == Finetune.FULL:
        return _checkpoint_model(run.config, final_dir(run, iteration))
    if (merged := merged_dir(run, iteration)) is not None:
        return _checkpoint_model(run.config, merged)
    path = check_adapter_dir(final_dir(run, iteration), run.config.rollout.server.max_lora_rank)
    return IterationModel(run.config, (adapter_name(run.config.run.name, iteration), path))


def _checkpoint_model(config: PipelineConfig, model_dir: Path) -> IterationModel:
    """Serve ``model_dir`` in place of the configured base model."""
    if not (model_dir / "config.json").is_file():
        raise AdapterError(f"the trained model to serve is missing: no {model_dir}/config.json")
    if config.rollout.urls:
        raise AdapterError(f"rollout.urls servers cannot serve the checkpoint {model_dir}; unset rollout.urls")
    model = config.model.model_copy(update={"name_or_path": str(model_dir)})
    return IterationModel(config.model_copy(update={"model": model}))


def grading_pool(config: PipelineConfig) -> GradingPool:
    """The pool for the configured grader: ``grader.workers`` workers that import what the grader preloads."""
    grader = get_grader(config.grader.name, **config.grader.options)
    return GradingPool(config.grader.workers, config.grader.timeout_s, preload=preloaded(grader))


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

            with phase("generation"):  # and grading, which runs as each answer arrives
                async with asyncio.TaskGroup() as group:
                    for task, sample in todo:
                        group.create_task(one(task, sample))
        path = writer.finalize(order)
        if todo:  # an attempt that only finalized what an earlier one generated measured nothing
            write_json_atomic(out_dir / THROUGHPUT_NAME, progress.throughput())
        return path
    finally:
        writer.close()


def collected_files(out_dir: Path) -> list[Path]:
    """What :func:`collect` publishes in ``out_dir``, for the manifest: the records, the throughput when measured."""
    throughput = out_dir / THROUGHPUT_NAME
    return [out_dir / ROLLOUTS_NAME, *([throughput] if throughput.is_file() else [])]


@dataclass
class Service:
    """An open rollout service: the learner, the optional teacher, and pooled grading."""

    learner: GenerationBackend
    teacher: GenerationBackend | None
    grade: GradeFn


@asynccontextmanager
async def open_service(
    model: IterationModel,
    log_dir: Path,
    servers: ServerKeeper | None = None,
    teacher: TeacherSection | None = None,
) -> AsyncIterator[Service]:
    """Start (or connect to) the learner's backend with ``model``'s adapter loaded, plus the grading pool, and a
    client of ``teacher`` when one is given (RISE's distillation).

    ``servers``: the run loop's keeper, whose servers the learner shares with the stages beside this one.

    Everything is closed on exit, errors and Ctrl-C included.
    """
    config = model.config
    with grading_pool(config) as pool:
        async with (
            open_learner(config, log_dir, servers) as learner,
            open_teacher(teacher, config.rollout) as teacher_backend,
        ):
            if model.adapter is not None:
                await learner.load_adapter(*map(str, model.adapter))
            yield Service(learner, teacher_backend, pooled_grading(pool, config.grader.name, config.grader.options))
