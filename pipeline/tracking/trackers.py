"""Experiment tracking: the run's figures in TensorBoard or Weights & Biases, on one global step.

``run.report_to`` names the trackers. Two kinds of writer share one tracker
run, in ``RUN/tracking/``:

- the train stage's worker hands ``report_to`` to TRL, whose integration
  callbacks log loss, learning rate, grad norm and tokens/s per step
  (:mod:`pipeline.tracking.callbacks` shifts their step onto the run's);
- the pipeline logs each finished stage's figures (:func:`sync_tracking`,
  with :mod:`pipeline.runner.stage_figures`): an eval's headline metrics with
  their intervals, the curation counts, a rollout's accuracy per turn and
  tokens/s.

The global step is the number of optimizer steps trained so far in the run:
iteration K's training logs at ``steps_through(K - 1) + s``; its eval at
``steps_through(K)``; the rollout and curation of iteration K, which use
iteration K-1's model, at ``steps_through(K - 1)``. Step counts come from
each finished train stage's ``train_summary.json``, so the step continues
across iterations, processes and resumes.

A stage's figures are logged once: after the manifest calls it done, and
then recorded in ``tracking/logged.json``, so a resumed run logs what an
interrupted one had not, and nothing twice. They are read from the stage's
files, not from memory, so a stage finished by an earlier process is logged
the same way.

W&B runs offline unless ``WANDB_MODE`` says otherwise: nothing here needs a
network (``wandb sync RUN/tracking/wandb/offline-run-*`` uploads later).
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from pipeline.config.choices import TrackerName
from pipeline.run.files import (
    LEDGER_NAME,
    RUN_ID_NAME,
    TENSORBOARD_DIR,
    TRACKING_DIR,
)
from pipeline.run.layout import RunDir, summary_path
from pipeline.run.manifest import StageState, parse_stage_key
from pipeline.system.atomic import write_json_atomic, write_text_atomic

logger = logging.getLogger(__name__)

WANDB_PROJECT = "selfimprove"
STEP_KEY = "train/global_step"
"""The x-axis every W&B metric is plotted against: the one transformers' WandbCallback defines."""


def tracking_dir(run: RunDir) -> Path:
    return run.root / TRACKING_DIR


def tensorboard_dir(run: RunDir) -> Path:
    """One TensorBoard run for the whole pipeline run: every process writes its event file here."""
    return tracking_dir(run) / TENSORBOARD_DIR


def tracker_run_id(run: RunDir) -> str:
    """The W&B run id of this pipeline run, made once and kept in ``tracking/run_id`` so resumes continue it."""
    path = tracking_dir(run) / RUN_ID_NAME
    if not path.is_file():
        write_text_atomic(path, f"{run.config.run.name}-{uuid.uuid4().hex[:8]}\n")
    return path.read_text(encoding="utf-8").strip()


def tracking_env(run: RunDir) -> dict[str, str]:
    """Environment for the trackers of every process of the run: where they write and which run they continue."""
    env = {"TENSORBOARD_LOGGING_DIR": str(tensorboard_dir(run).resolve())}
    if TrackerName.WANDB in run.config.run.report_to:
        env |= {
            "WANDB_DIR": str(tracking_dir(run).resolve()),
            "WANDB_PROJECT": os.environ.get("WANDB_PROJECT", WANDB_PROJECT),
            "WANDB_RUN_ID": tracker_run_id(run),
            "WANDB_NAME": run.config.run.name,
            "WANDB_RESUME": "allow",
            "WANDB_MODE": os.environ.get("WANDB_MODE", "offline"),
            "WANDB_SILENT": os.environ.get("WANDB_SILENT", "true"),
        }
    return env


def steps_through(run: RunDir, iteration: int) -> int:
    """Optimizer steps trained in iterations 1..``iteration``: the global step once iteration ``iteration`` is trained.

    An iteration whose train stage has written no summary adds nothing (it
    has not trained, or a stage was run out of order).
    """
    total = 0
    for earlier in range(1, iteration + 1):
        summary = summary_path(run, earlier)
        if summary.is_file():
            total += int(json.loads(summary.read_text(encoding="utf-8"))["steps"])
    return total


def stage_step(run: RunDir, iteration: int, stage: str) -> int:
    """The global step a stage's figures are logged at (module doc)."""
    return steps_through(run, iteration if stage in ("train", "eval") else iteration - 1)


class Tracker(Protocol):
    def log(self, metrics: dict[str, float], step: int) -> None: ...

    def close(self) -> None: ...


class TensorBoardTracker:
    """torch's SummaryWriter (the writer transformers' TensorBoardCallback uses), into the run's TensorBoard dir."""

    def __init__(self, log_dir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(log_dir))

    def log(self, metrics: dict[str, float], step: int) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        self.writer.close()


class WandbTracker:
    """The run's W&B run, resumed by id, plotted against ``train/global_step`` like the trainer's metrics."""

    def __init__(self, run: RunDir) -> None:
        import wandb

        env = tracking_env(run)
        self.run = wandb.init(
            project=env["WANDB_PROJECT"],
            id=env["WANDB_RUN_ID"],
            name=env["WANDB_NAME"],
            dir=env["WANDB_DIR"],
            mode=env["WANDB_MODE"],  # type: ignore[arg-type]  # tracking_env writes one of wandb's modes
            resume="allow",
            config={"selfimprove": run.config.model_dump(mode="json")},
            settings=wandb.Settings(console="off"),  # the pipeline's console is progress bars, not logs
        )
        self.run.define_metric(STEP_KEY)
        self.run.define_metric("*", step_metric=STEP_KEY, step_sync=True)

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.run.log({**metrics, STEP_KEY: step})

    def close(self) -> None:
        """Finish the run and stop this process's wandb service.

        A running service leaves its address in ``WANDB_SERVICE``, which the
        train worker would inherit: its run would then live in this process's
        service, which keeps the run id "in use" after the worker exits.
        """
        import wandb

        self.run.finish()
        wandb.teardown()


def open_trackers(run: RunDir) -> list[Tracker]:
    """One writer per tracker of ``run.report_to`` (imported here: each pulls in its library)."""
    trackers: list[Tracker] = []
    for name in run.config.run.report_to:
        trackers.append(
            TensorBoardTracker(tensorboard_dir(run)) if name == TrackerName.TENSORBOARD else WandbTracker(run)
        )
    return trackers


def logged_stages(run: RunDir) -> list[str]:
    path = tracking_dir(run) / LEDGER_NAME
    return json.loads(path.read_text(encoding="utf-8"))["stages"] if path.is_file() else []


StageFigures = Callable[[RunDir, int, str], dict[str, float]]
"""A finished stage's figures from its files, given the run, the iteration and the stage's name
(:func:`pipeline.runner.stage_figures.stage_metrics`): the stages sit above tracking, so it is handed in."""


def sync_tracking(run: RunDir, figures: StageFigures) -> list[str]:
    """Log every finished stage not logged yet, in plan order, with ``figures``; returns their keys (``iter_K/stage``).

    The ledger is written after the trackers are closed (their files
    flushed), so a crash in between at worst logs those stages again.
    """
    if not run.config.run.report_to:
        return []
    logged = logged_stages(run)
    todo = [key for key, record in run.manifest.stages.items() if record.state is StageState.DONE and key not in logged]
    if not todo:
        return []
    batches = [
        (stage_step(run, *parse_stage_key(key)), metrics)
        for key in todo
        if (metrics := _trackable_metrics(run, key, figures))
    ]
    if batches:  # a train stage alone has nothing to add: TRL logged it
        trackers = open_trackers(run)
        try:
            for step, metrics in batches:
                for tracker in trackers:
                    tracker.log(metrics, step)
        finally:
            for tracker in trackers:
                tracker.close()
    write_json_atomic(tracking_dir(run) / LEDGER_NAME, {"stages": [*logged, *todo]})
    return todo


def _trackable_metrics(run: RunDir, key: str, figures: StageFigures) -> dict[str, float]:
    """A stage's figures, or none (with a warning) when its files cannot give them: tracking never stops a run."""
    try:
        return figures(run, *parse_stage_key(key))
    except (KeyError, TypeError, ValueError, OSError) as exc:  # CorruptFileError is a ValueError
        logger.warning("not tracked: %s (%s: %s)", key, type(exc).__name__, exc)
        return {}
