"""The ``train`` stage: RISE's weighted SFT of iteration K, run under ``accelerate launch``.

The stage launches :mod:`pipeline.train_worker` with ``accelerate launch``:
with the accelerate config ``training.accelerate_config`` names, else as one
process (on CPU when there is no GPU). The launcher runs in a process group of
its own that dies with the pipeline, even when the pipeline is SIGKILLed, and
is stopped on Ctrl-C and errors; everything it prints goes to
``iter_K/train/train.log``. Layout::

    iter_K/train/
      train.log            the trainer's output, appended by every attempt
      checkpoints/         checkpoint-N every training.save_steps steps
      adapter/             the LoRA adapter (finetune lora), or
      model/               the whole model with its tokenizer (finetune full)
      merged/              the adapter merged into the base model (rollout.serve_merged)
      train_summary.json   examples, steps, final loss, runtime, tokens/s

The worker resumes from the newest complete checkpoint, so an interrupted
stage continues where it stopped and ends with the weights of an
uninterrupted one. The stage is recorded in the manifest; a rerun of a
finished stage does nothing.

This module is also the worker's map of the run directory, so it imports
nothing heavy: the pipeline process never loads torch's training stack.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from pipeline.adapters import AdapterError, check_adapter_dir
from pipeline.config import RiseSection, TrainingSection
from pipeline.curate_stage import STAGE as CURATE_STAGE, TRAIN_NAME
from pipeline.run_dir import RunDir
from pipeline.subprocess_utils import start_in_own_session, stop_group, tail

STAGE = "train"
LOG_NAME = "train.log"
SUMMARY_NAME = "train_summary.json"
CHECKPOINTS_NAME = "checkpoints"
MERGED_NAME = "merged"
STEP_MARKER = "selfimprove-train step"
# Not anchored at the line start: tqdm's bar, on the same log, ends its updates with "\r".
_STEP_LINE = re.compile(rf"{STEP_MARKER} (\d+)/(\d+)$", re.MULTILINE)
POLL_S = 0.5
STOP_GRACE_S = 10.0


class TrainError(RuntimeError):
    """The train stage cannot run with this run's config or files, or training failed."""


def final_dir(run: RunDir, iteration: int) -> Path:
    """Where iteration ``iteration``'s trained adapter (or, for full fine-tuning, model) lands."""
    name = "model" if run.config.training.finetune == "full" else "adapter"
    return run.stage_dir(iteration, STAGE) / name


def merged_dir(run: RunDir, iteration: int) -> Path | None:
    """Where the adapter merged into the base model lands (``rollout.serve_merged``), None when none is wanted."""
    if not run.config.rollout.serve_merged or run.config.training.finetune == "full":
        return None
    return run.stage_dir(iteration, STAGE) / MERGED_NAME


def checkpoints_dir(run: RunDir, iteration: int) -> Path:
    return run.stage_dir(iteration, STAGE) / CHECKPOINTS_NAME


def summary_path(run: RunDir, iteration: int) -> Path:
    return run.stage_dir(iteration, STAGE) / SUMMARY_NAME


def training_set(run: RunDir, iteration: int) -> Path:
    """Iteration ``iteration``'s curated training set; refuses a curate stage that is not done, or an empty set."""
    path = run.root / f"iter_{iteration}" / CURATE_STAGE / TRAIN_NAME
    if not run.manifest.is_done(iteration, CURATE_STAGE) or not path.is_file():
        raise TrainError(
            f"iteration {iteration}'s curate stage is not done (no finished {path}); "
            f"run `selfimprove curate {run.root} --iteration {iteration}` first"
        )
    if path.stat().st_size == 0:
        raise TrainError(f"iteration {iteration}'s training set {path} is empty: no rollout turn was kept")
    return path


def previous_output(run: RunDir, iteration: int) -> Path | None:
    """The adapter or model to continue training (``method.train_from: previous``), None to start from the base.

    Iteration 1 always starts from the base model.
    """
    if run.config.method.train_from == "base" or iteration == 1:
        return None
    previous = iteration - 1
    if not run.manifest.is_done(previous, STAGE):
        raise TrainError(
            f"method.train_from is 'previous', but iteration {previous}'s train stage is not done; "
            f"run `selfimprove train {run.root} --iteration {previous}` first"
        )
    return check_output(run, previous)


def check_output(run: RunDir, iteration: int) -> Path:
    """Iteration ``iteration``'s trained adapter or model directory, checked to be complete."""
    path = final_dir(run, iteration)
    if run.config.training.finetune == "full":
        if not (path / "config.json").is_file():
            raise TrainError(f"no trained model in {path} (no config.json)")
        return path
    try:
        return check_adapter_dir(path)
    except AdapterError as exc:
        raise TrainError(str(exc)) from None


def output_files(run: RunDir, iteration: int) -> list[Path]:
    """The files the manifest records: the adapter's config and weights (or the whole model's files), the summary."""
    path = check_output(run, iteration)
    if run.config.training.finetune == "full":
        files = sorted(p for p in path.iterdir() if p.is_file())
    else:
        files = [path / "adapter_config.json", path / "adapter_model.safetensors"]
    merged = merged_dir(run, iteration)
    if merged is not None:
        if not (merged / "config.json").is_file():
            raise TrainError(f"training finished without writing the merged model {merged}")
        files += sorted(p for p in merged.iterdir() if p.suffix in (".json", ".safetensors"))
    summary = summary_path(run, iteration)
    if not summary.is_file():
        raise TrainError(f"training finished without writing {summary}")
    return [*files, summary]


def step_line(step: int, total: int) -> str:
    """The line the worker prints at the start and after each optimizer step; the stage shows it as progress."""
    return f"{STEP_MARKER} {step}/{total}"


def launch_options(settings: TrainingSection) -> list[str]:
    """``accelerate launch`` options: the configured accelerate file, else one process (``--cpu`` without CUDA).

    ``--quiet`` keeps the launcher's own traceback out of the log, so that
    the worker's error is the log's last lines.
    """
    if settings.accelerate_config is not None:
        return ["--config_file", str(settings.accelerate_config), "--quiet"]
    import torch

    single = ["--num_processes", "1", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    return [*single, *([] if torch.cuda.is_available() else ["--cpu"]), "--quiet"]


def launch_command(run: RunDir, iteration: int) -> list[str]:
    """The launcher's command line; the run directory goes absolute, valid whatever the worker's working directory."""
    return [
        sys.executable, "-m", "accelerate.commands.launch",
        *launch_options(run.config.training),
        "--module", "pipeline.train_worker",
        str(run.root.resolve()), "--iteration", str(iteration),
    ]


class StepWatcher:
    """Follows the lines an attempt appends to the log, for the newest step line, without rereading the log."""

    def __init__(self, log: IO[bytes]) -> None:
        self._log = log
        self._pending = b""

    def latest(self) -> tuple[int, int] | None:
        data = self._pending + self._log.read()
        complete, _, self._pending = data.rpartition(b"\n")
        found = _STEP_LINE.findall(complete.decode(errors="replace"))
        return (int(found[-1][0]), int(found[-1][1])) if found else None


def run_training(run: RunDir, iteration: int, show_progress: bool) -> None:
    """Launch the worker and wait for it, showing its steps; stop its process group however this ends."""
    log_path = run.stage_dir(iteration, STAGE) / LOG_NAME
    command = launch_command(run, iteration)
    attempt = run.manifest.record(iteration, STAGE).attempts
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(log_path, "ab") as log, open(log_path, "rb") as follow:
        log.write(f"=== train iteration {iteration}, attempt {attempt}: {' '.join(command)}\n".encode())
        log.flush()
        follow.seek(0, os.SEEK_END)
        process = start_in_own_session(command, log, env)
        try:
            _wait(process, StepWatcher(follow), f"training iter {iteration}", show_progress)
        finally:
            stop_group(process, STOP_GRACE_S)
    if process.returncode != 0:
        raise TrainError(
            f"training iteration {iteration} failed (exit code {process.returncode}); "
            f"see {log_path}:\n{tail(log_path)}"
        )


def _wait(process: subprocess.Popen, watcher: StepWatcher, description: str, show_progress: bool) -> None:
    """Poll until the launcher exits, showing "step s/N" (a final read catches the last step line)."""
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TimeRemainingColumn())
    with Progress(*columns, disable=not show_progress) as progress:
        task = progress.add_task(description, total=None)
        while True:
            exited = process.poll() is not None
            if (step := watcher.latest()) is not None:
                progress.update(task, completed=step[0], total=step[1])
            if exited:
                return
            time.sleep(POLL_S)


def run_train_stage(run: RunDir, iteration: int, show_progress: bool = True) -> Path:
    """Train iteration ``iteration``'s adapter (or model); returns its directory.

    The manifest calls the stage done only after the worker exited cleanly
    and its outputs were checked, so a crash leaves a stage that the next
    run resumes from its checkpoints.
    """
    if run.manifest.is_done(iteration, STAGE):
        return final_dir(run, iteration)
    run.manifest.start(iteration, STAGE)
    try:
        method = run.config.method
        if not isinstance(method, RiseSection):
            raise TrainError(f"the train stage runs RISE's weighted SFT, but this run's method is {method.name!r}")
        training_set(run, iteration)
        previous_output(run, iteration)
        run_training(run, iteration, show_progress)
        outputs = output_files(run, iteration)
    except BaseException as exc:
        run.manifest.fail(iteration, STAGE, f"{type(exc).__name__}: {exc}")
        raise
    run.manifest.complete(iteration, STAGE, outputs)
    return final_dir(run, iteration)
