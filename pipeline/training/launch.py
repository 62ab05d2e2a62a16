"""The ``train`` stage's launcher: every method's training worker, run under ``accelerate launch``.

The stage (each method's, through :func:`train_stage`) launches
:mod:`pipeline.training.worker` with ``accelerate launch``:
with the accelerate config ``training.accelerate_config`` names (DDP, FSDP2,
DeepSpeed, several machines), else as plain processes (one, on CPU when there
is no GPU, or ``training.num_processes`` under torchrun), the ``training``
section's launch settings overriding the file's. The launcher runs in a
process group of its own that dies with the pipeline, even when the pipeline
is SIGKILLed, and is stopped on Ctrl-C and errors; everything it prints goes
to ``iter_K/train/train.log``. When one of several processes dies, torchrun
stops the others and the stage's error names the rank. On the other machines
of a multi-machine run, :func:`join_training` launches their processes each
time the stage starts. Layout::

    iter_K/train/
      train.log            the trainer's output, appended by every attempt
      progress.jsonl       the steps done, appended by every attempt (pipeline.training.progress)
      checkpoints/         checkpoint-N every training.save_steps steps
      adapter/             the LoRA adapter (finetune lora), or
      model/               the whole model with its tokenizer (finetune full)
      merged/              the adapter merged into the base model (rollout.serve_merged)
      train_summary.json   examples, steps, final loss, runtime, tokens/s, the main worker's peak RSS

The worker resumes from the newest complete checkpoint, so an interrupted
stage continues where it stopped and ends with the weights of an
uninterrupted one. The stage is recorded in the manifest; a rerun of a
finished stage does nothing.

The paths above come from :mod:`pipeline.run.layout`. This module imports
nothing heavy: the pipeline process never loads torch's training stack.
"""

from __future__ import annotations

import ctypes.util
import importlib.util
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from pipeline.config.choices import Finetune
from pipeline.config.launch import LaunchSettings
from pipeline.config.settings import TrainingSection
from pipeline.engine.adapters import AdapterError, check_adapter_dir
from pipeline.run.files import LOG_NAME
from pipeline.run.layout import TRAIN_STAGE, RunDir, final_dir, merged_dir, summary_path
from pipeline.run.lifecycle import StageError, stage_attempt
from pipeline.run.manifest import Manifest, StageRecord, StageState
from pipeline.run.timings import phase, timings_env
from pipeline.system.processes import start_in_own_session, stop_group, tail
from pipeline.tracking.trackers import tracking_env
from pipeline.training.progress import ProgressFollower, progress_path

STAGE = TRAIN_STAGE
POLL_S = 0.5
STOP_GRACE_S = 10.0
JOIN_POLL_S = 2.0
# torchrun's report of a failed multi-process launch: the block after "Root Cause", one "key : value" per line.
_ROOT_CAUSE = re.compile(r"Root Cause \(first observed failure\):(.*?)(?:^=+$|\Z)", re.DOTALL | re.MULTILINE)
_CAUSE_FIELD = re.compile(r"^\s*(rank|host|exitcode|traceback)\s*:\s*(.*?)\s*$", re.MULTILINE)


class TrainError(StageError):
    """The train stage cannot run with this run's config or files, or training failed."""


def previous_output(run: RunDir, iteration: int) -> Path | None:
    """The adapter or model to continue training, None to start from the base.

    The method's section says whether it continues (ExIt always: RL carries
    on from the last policy; RISE with ``method.train_from: previous``).
    Iteration 1 always starts from the base model.
    """
    reason = run.config.method.continue_reason()
    if reason is None or iteration == 1:
        return None
    previous = iteration - 1
    if not run.manifest.verified_done(previous, STAGE):
        raise TrainError(
            f"{reason}, but iteration {previous}'s train stage is not done; "
            f"run `selfimprove train {run.root} --iteration {previous}` first"
        )
    return check_output(run, previous)


def check_output(run: RunDir, iteration: int) -> Path:
    """Iteration ``iteration``'s trained adapter or model directory, checked to be complete."""
    path = final_dir(run, iteration)
    if run.config.training.finetune == Finetune.FULL:
        if not (path / "config.json").is_file():
            raise TrainError(f"no trained model in {path} (no config.json)")
        return path
    try:
        return check_adapter_dir(path)
    except AdapterError as exc:
        raise TrainError(str(exc)) from None


def output_files(run: RunDir, iteration: int) -> list[Path]:
    """What the manifest records: the adapter (or whole model) directory, the merged model's, the summary.

    A directory is recorded as every file in it, tokenizer and chat template
    included: whatever serves or exports the model reads them too.
    """
    outputs = [check_output(run, iteration)]
    merged = merged_dir(run, iteration)
    if merged is not None:
        if not (merged / "config.json").is_file():
            raise TrainError(f"training finished without writing the merged model {merged}")
        outputs.append(merged)
    summary = summary_path(run, iteration)
    if not summary.is_file():
        raise TrainError(f"training finished without writing {summary}")
    return [*outputs, summary]


def launch_options(settings: TrainingSection, machine_rank: int = 0) -> list[str]:
    """``accelerate launch`` options: the accelerate file, overridden by the ``training`` section's settings.

    Without a file: one process (``--cpu`` without CUDA), or N processes under
    torchrun (``--multi_gpu``: DDP over NCCL on GPUs, over gloo on the CPU).
    ``auto`` precision launches as ``no``: the worker turns bf16 on itself
    where it applies. ``--quiet`` keeps the launcher's own traceback out of
    the log, so that the worker's error is the log's last lines.
    """
    launch = LaunchSettings.of(settings)
    if settings.accelerate_config is not None:
        options = ["--config_file", str(settings.accelerate_config)]
    elif launch.num_processes > 1:
        options = ["--multi_gpu", "--dynamo_backend", "no"]
    else:
        options = ["--dynamo_backend", "no", *([] if _has_cuda() else ["--cpu"])]
    options += [
        "--num_processes",
        str(launch.num_processes),
        "--num_machines",
        str(launch.num_machines),
        "--mixed_precision",
        "no" if settings.mixed_precision == "auto" else settings.mixed_precision,
    ]
    if launch.num_machines > 1:
        options += ["--machine_rank", str(machine_rank), "--main_process_ip", str(launch.main_process_ip)]
        options += ["--main_process_port", str(launch.main_process_port)] if launch.main_process_port else []
    elif launch.num_processes > 1:
        # 0: a free port, so that two runs on one machine do not collide on accelerate's default 29500.
        options += ["--main_process_port", str(launch.main_process_port or 0)]
    if settings.gpu_ids is not None:
        options += ["--gpu_ids", ",".join(map(str, settings.gpu_ids))]
    return [*options, "--quiet"]


def launch_env(settings: TrainingSection) -> dict[str, str]:
    """Environment for the launcher: a config's ``use_cpu: true`` reaches the workers also under torchrun.

    accelerate's torchrun path (``distributed_type: MULTI_GPU``, the only way
    it starts several local processes without MPI) drops ``use_cpu``; the
    worker reads ``ACCELERATE_USE_CPU`` (:func:`pipeline.methods.rise.training.runs_on_cpu`).
    Training on the CPU preloads :func:`cpu_allocator`, where installed, ahead
    of whatever ``LD_PRELOAD`` already holds.
    """
    env = {"PYTHONUNBUFFERED": "1"}
    launch = LaunchSettings.of(settings)
    if launch.use_cpu:
        env["ACCELERATE_USE_CPU"] = "true"
    if launch.use_cpu or not _has_cuda():
        if allocator := cpu_allocator():
            env["LD_PRELOAD"] = ":".join(filter(None, [allocator, os.environ.get("LD_PRELOAD", "")]))
    return env


def cpu_allocator() -> str | None:
    """tcmalloc (Debian's ``libtcmalloc-minimal4``, which ``make install`` adds where it can), if installed.

    A CPU training step allocates and frees activations of hundreds of MB;
    glibc's malloc keeps much of what is freed resident. On the quickstart's
    data tcmalloc held the worker's peak RSS at 5.2 GB instead of 8.1, at the
    same speed (``bench/train.py`` runs both contenders under it).
    """
    return ctypes.util.find_library("tcmalloc_minimal")


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def check_launchable(settings: TrainingSection) -> None:
    """Fail before launching when the accelerate config needs DeepSpeed and it is not installed."""
    if LaunchSettings.of(settings).distributed_type == "DEEPSPEED" and importlib.util.find_spec("deepspeed") is None:
        raise TrainError(
            f"training.accelerate_config {settings.accelerate_config} uses DeepSpeed, which is not installed "
            "here: `pip install deepspeed` (it needs a CUDA toolkit), or pick another accelerate config"
        )


def launch_command(run: RunDir, iteration: int, machine_rank: int = 0) -> list[str]:
    """The launcher's command line; the run directory goes absolute, valid whatever the worker's working directory."""
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        *launch_options(run.config.training, machine_rank),
        "--module",
        "pipeline.training.worker",
        str(run.root.resolve()),
        "--iteration",
        str(iteration),
    ]


def failure_summary(log_text: str) -> str | None:
    """The "Root Cause" torchrun reports when a process of a multi-process launch fails: which rank, and how.

    None for a single-process launch, whose error is the log's tail.
    """
    causes = _ROOT_CAUSE.findall(log_text)
    if not causes:
        return None
    fields = {key: " ".join(value.split()) for key, value in _CAUSE_FIELD.findall(causes[-1])}
    summary = (
        f"rank {fields.get('rank', '?')} on {fields.get('host', '?')} failed with exit code "
        f"{fields.get('exitcode', '?')}"
    )
    traceback = fields.get("traceback", "")
    if traceback and not traceback.startswith("To enable traceback"):
        summary += f": {traceback}"
    return summary


def run_training(run: RunDir, iteration: int, show_progress: bool) -> None:
    """Launch the worker and wait for it, showing its steps; stop its process group however this ends.

    A process that dies takes the others down with it (torchrun stops the
    survivors), and the error names it.
    """
    settings = run.config.training
    check_launchable(settings)
    log_path = run.stage_dir(iteration, STAGE) / LOG_NAME
    command = launch_command(run, iteration)
    attempt = run.manifest.record(iteration, STAGE).attempts
    env = {**os.environ, **launch_env(settings), **tracking_env(run), **timings_env()}
    follower = ProgressFollower(progress_path(run, iteration))
    with open(log_path, "ab") as log:
        log.write(f"=== train iteration {iteration}, attempt {attempt}: {' '.join(command)}\n".encode())
        log.flush()
        start = log.tell()
        process = start_in_own_session(command, log, env)
        try:
            with phase("training"):
                _wait(process, follower, f"training iter {iteration}", show_progress)
        finally:
            stop_group(process, STOP_GRACE_S)
    if process.returncode != 0:
        with open(log_path, "rb") as attempt_log:
            attempt_log.seek(start)
            cause = failure_summary(attempt_log.read().decode(errors="replace"))
        raise TrainError(
            f"training iteration {iteration} failed: {cause or f'exit code {process.returncode}'}; "
            f"see {log_path}:\n{tail(log_path)}"
        )
    if show_progress and (summary := summary_path(run, iteration)).is_file():
        print(summary_line(iteration, json.loads(summary.read_text())), flush=True)


def summary_line(iteration: int, summary: dict[str, Any]) -> str:
    """What the stage prints when training ends: steps, throughput where measured, the worker's peak memory."""
    parts = [f"{summary['steps']} steps"]
    if summary.get("train_tokens_per_s"):
        parts.append(f"{summary['train_tokens_per_s']:.0f} trained tokens/s")
    if summary.get("steps_per_minute"):
        parts.append(f"{summary['steps_per_minute']:.1f} steps/min")
    if summary.get("peak_rss_gb") is not None:
        parts.append(f"peak RSS {summary['peak_rss_gb']:.1f} GB (main worker)")
    return f"training iter {iteration}: " + ", ".join(parts)


def join_training(
    run_root: Path, machine_rank: int, on_join: Callable[[int, int], None], poll_s: float = JOIN_POLL_S
) -> list[int]:
    """On machine ``machine_rank`` (> 0) of a multi-machine run: train with the main machine until training is done.

    The main machine's pipeline drives the run and alone writes the manifest
    and run files. This machine watches the manifest on the shared run
    directory and, each time a train stage starts or restarts there,
    launches its own processes with the same options, so that they meet the
    main machine's at the rendezvous. When the main machine's stage fails
    (an attempt this machine joined, or one started after it began
    watching), this machine stops its processes and raises :class:`TrainError`:
    they would otherwise wait for peers that are gone. A failure recorded
    before joining is the past: the stage's next attempt is awaited.
    Returns the launchers' exit codes; ``on_join(iteration, attempt)`` is
    called before each launch.
    """
    run = RunDir.open(run_root)
    check_launchable(run.config.training)
    machines = LaunchSettings.of(run.config.training).num_machines
    if machines < 2:
        raise TrainError(f"{run_root} trains on one machine (training.num_machines is 1): there is nothing to join")
    if not 0 < machine_rank < machines:
        raise TrainError(
            f"{run_root} trains on {machines} machines: joining needs a machine rank from 1 to "
            f"{machines - 1} (machine rank 0 runs the pipeline itself)"
        )
    iterations = range(1, run.config.run.iterations + 1)
    over = _attempts_over(Manifest.load(run_root), iterations)
    joined = dict(over)  # per iteration, the last attempt launched here
    codes: list[int] = []
    while True:
        manifest = Manifest.load(run_root)
        if all(manifest.record(iteration, STAGE).state is StageState.DONE for iteration in iterations):
            return codes
        for iteration in iterations:
            record = manifest.record(iteration, STAGE)
            _raise_if_failed(run_root, iteration, record, over[iteration])
            if record.state is StageState.RUNNING and record.attempts > joined[iteration]:
                joined[iteration] = record.attempts
                on_join(iteration, record.attempts)
                codes.append(_launch_here(run, iteration, machine_rank, record.attempts, poll_s))
        time.sleep(poll_s)


def _attempts_over(manifest: Manifest, iterations: range) -> dict[int, int]:
    """Per iteration, how many train attempts were over when joining started (a running one is not)."""
    records = {iteration: manifest.record(iteration, STAGE) for iteration in iterations}
    return {iteration: r.attempts - (r.state is StageState.RUNNING) for iteration, r in records.items()}


def _raise_if_failed(run_root: Path, iteration: int, record: StageRecord, attempts_over: int) -> None:
    """A failed attempt that was not over when joining started ends the join with the main machine's error."""
    if record.state is StageState.FAILED and record.attempts > attempts_over:
        raise TrainError(
            f"iteration {iteration}'s train stage failed on the main machine (attempt {record.attempts}): "
            f"{(record.error or 'no error recorded').splitlines()[0]}; "
            f"join again once `selfimprove resume {run_root}` runs there"
        )


def _launch_here(run: RunDir, iteration: int, machine_rank: int, attempt: int, poll_s: float) -> int:
    """This machine's launcher, its output on this terminal; its exit code.

    While it runs, the manifest is watched: should the main machine's attempt
    fail, the launcher is stopped and the failure raised.
    """
    env = {**os.environ, **launch_env(run.config.training)}
    process = start_in_own_session(launch_command(run, iteration, machine_rank), None, env)
    try:
        while process.poll() is None:
            _raise_if_failed(run.root, iteration, Manifest.load(run.root).record(iteration, STAGE), attempt - 1)
            time.sleep(poll_s)
        return process.returncode
    finally:
        stop_group(process, STOP_GRACE_S)


def _wait(process: subprocess.Popen, follower: ProgressFollower, description: str, show_progress: bool) -> None:
    """Poll until the launcher exits, showing "step s/N" (a final read catches the last step)."""
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, disable=not show_progress) as progress:
        task = progress.add_task(description, total=None)
        while True:
            exited = process.poll() is not None
            if (step := follower.latest()) is not None:
                progress.update(task, completed=step.step, total=step.total)
            if exited:
                return
            time.sleep(POLL_S)


def train_stage(run: RunDir, iteration: int, train: Callable[[], list[Path]]) -> Path:
    """Run a method's training of iteration ``iteration`` as one stage attempt; returns its adapter (or model) directory.

    ``train`` trains and returns the files the manifest records. The
    previous iteration's model is checked first when training continues it.
    """
    with stage_attempt(run.manifest, iteration, STAGE) as attempt:
        if not attempt.done:
            previous_output(run, iteration)
            attempt.outputs = train()
    return final_dir(run, iteration)
