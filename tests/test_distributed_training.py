"""The train stage on several processes for real: ``accelerate launch`` of two CPU processes over gloo.

The tiny model trains for real under torchrun; nothing is mocked. Two CPU
processes stand in for two GPUs (DDP), and two launches on one machine for
two machines.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from pipeline.engine.stage_context import StageContext
from pipeline.engine.vllm_server import free_port
from pipeline.methods.rise.stages import run_train_stage
from pipeline.methods.rise.training import training_dataset
from pipeline.methods.rise.weighted_sft import build_trainer
from pipeline.run.layout import RunDir
from pipeline.run.manifest import StageState
from pipeline.system.atomic import read_jsonl
from pipeline.training.checkpoints import train
from pipeline.training.launch import TrainError, join_training
from tests.helpers.cli_runs import REPO
from tests.helpers.training import (
    RISE,
    attempts,
    checkpoint_step,
    finish_curate,
    first_steps,
    lora_b,
    lora_weights,
    processes_mentioning,
    training_run,
    wait_until_gone,
)

pytestmark = pytest.mark.slow

CPU_2PROC = REPO / "configs" / "accelerate" / "cpu_2proc.yaml"
AUDIT_DIR = REPO / "tests" / "write_audit"


def audit_writes(monkeypatch: pytest.MonkeyPatch, root: Path, log: Path) -> None:
    """Have every Python process started from now on record what it writes under ``root`` (see write_audit/)."""
    monkeypatch.setenv("PYTHONPATH", str(AUDIT_DIR))
    monkeypatch.setenv("WRITE_AUDIT_ROOT", str(root))
    monkeypatch.setenv("WRITE_AUDIT_LOG", str(log))


def writes_by_rank(log: Path) -> dict[str, set[str]]:
    """rank -> the (event, path) pairs the audit recorded for it."""
    found: dict[str, set[str]] = {}
    for line in log.read_text().splitlines():
        rank, event, path = line.split("\t")
        found.setdefault(rank, set()).add(f"{event} {path}")
    return found


def first_log_entry(checkpoint: Path) -> dict:
    """The trainer's log of step 1 (loss, grad_norm, tokens seen), as saved in a checkpoint."""
    return json.loads((checkpoint / "trainer_state.json").read_text())["log_history"][0]


def test_two_processes_train_as_one_on_the_union_of_their_shards_and_only_rank_0_writes(
    tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """8 examples, 2 processes x batch 4: one optimizer step over all 8, against one process with batch 8.

    The loss and gradient norm of that step are the weighted ones of all 8
    examples (odd ones weigh e^2.5): each process saw 4 of them and no example
    was seen twice, the gradients were averaged, and the weight sum was
    gathered across the processes. The adapters then agree too.
    """
    run = training_run(
        tmp_path / "runs", tiny_model, accelerate_config=str(CPU_2PROC), per_device_batch_size=4, save_steps=1
    )
    finish_curate(run, 1, rows=8)
    stage = run.root / "iter_1" / "train"
    audit_writes(monkeypatch, run.root, tmp_path / "writes.tsv")

    run_train_stage(StageContext(run, 1, progress=False))

    data = training_dataset(run.root / "iter_1" / "curate" / "train.jsonl")
    single = run.config.training.model_copy(update={"per_device_batch_size": 8})
    reference = build_trainer(
        tiny_model, data, tmp_path / "single", single, run.config.method, use_cpu=True, seed=run.config.run.seed
    )
    train(reference, tmp_path / "single" / "adapter", resume=False)

    two, one = first_log_entry(stage / "checkpoints" / "checkpoint-1"), reference.state.log_history[0]
    assert two["num_input_tokens_seen"] == one["num_input_tokens_seen"]
    assert two["loss"] == pytest.approx(one["loss"], rel=1e-4)
    assert two["grad_norm"] == pytest.approx(one["grad_norm"], rel=1e-4)
    distributed, alone = lora_weights(stage / "adapter"), lora_weights(tmp_path / "single" / "adapter")
    assert distributed.keys() == alone.keys()
    assert lora_b(distributed).abs().max() > 0  # it trained
    for name in alone:
        torch.testing.assert_close(distributed[name], alone[name], atol=1e-5, rtol=1e-4)
    assert json.loads((stage / "train_summary.json").read_text())["steps"] == 1
    # Each process saved its own RNG state into the checkpoint (for an exact resume) ...
    assert {p.name for p in (stage / "checkpoints" / "checkpoint-1").glob("rng_state*")} == {
        "rng_state_0.pth",
        "rng_state_1.pth",
    }
    # ... but every file written through Python (adapter config, summary, trainer state, renames) is rank 0's.
    writes = writes_by_rank(tmp_path / "writes.tsv")
    assert f"rename {stage / 'adapter'}" in writes["0"]
    assert any(w.endswith("train_summary.json") for w in writes["0"])
    assert "1" not in writes, writes.get("1")


def rank_pid(root: Path, rank: int) -> int | None:
    """The pid of the training process of global rank ``rank`` of the run in ``root`` (torchrun sets RANK)."""
    for pid in processes_mentioning(str(root)):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in environ:
            return pid
    return None


def test_a_killed_rank_fails_the_stage_naming_it_and_a_rerun_resumes(tmp_path: Path, tiny_model: Path) -> None:
    """No accelerate config, training.num_processes 2: torchrun's DDP launch, here on gloo. 12 steps."""
    run = training_run(tmp_path, tiny_model, {**RISE, "epochs": 2}, num_processes=2)
    finish_curate(run, 1)
    stage = run.root / "iter_1" / "train"
    with ThreadPoolExecutor(1) as pool:
        attempt = pool.submit(run_train_stage, StageContext(run, 1, progress=False))
        while checkpoint_step(run) < 2:
            assert not attempt.done(), "the stage ended before its first checkpoint"
            time.sleep(0.02)
        os.kill(rank_pid(run.root, 1), signal.SIGKILL)
        with pytest.raises(TrainError) as failure:
            attempt.result()
    # The survivor was stopped, not left waiting for its peer; the error says who died and how.
    assert wait_until_gone(str(run.root)) == []
    assert "training iteration 1 failed: rank 1 (local_rank: 1)" in str(failure.value)
    assert "Signal 9 (SIGKILL) received by PID" in str(failure.value)
    record = RunDir.open(run.root).manifest.record(1, "train")
    assert record.state is StageState.FAILED and record.error.startswith("TrainError") and "rank 1" in record.error
    resumed_from = checkpoint_step(run)

    run_train_stage(StageContext(RunDir.open(run.root), 1, progress=False))

    record = RunDir.open(run.root).manifest.record(1, "train")
    assert record.state is StageState.DONE and record.attempts == 2
    assert 2 <= resumed_from < 12
    assert len(attempts(stage / "train.log")) == 2
    assert first_steps(stage) == [0, resumed_from]
    assert json.loads((stage / "train_summary.json").read_text())["steps"] == 12


def test_a_second_machine_joins_each_train_stage_of_the_main_one(tmp_path: Path, tiny_model: Path) -> None:
    """Two machines of one process each, both on this host: the pipeline launches machine 0, join machine 1."""
    port = free_port()
    run = training_run(
        tmp_path,
        tiny_model,
        num_processes=2,
        num_machines=2,
        main_process_ip="127.0.0.1",
        main_process_port=port,
        per_device_batch_size=2,
        save_steps=10,
    )
    finish_curate(run, 1, rows=4)
    run.manifest.start(2, "train")  # iteration 2 already trained: joining follows until every train stage is done
    run.manifest.complete(2, "train", [])
    joined: list[tuple[int, int]] = []

    def on_join(iteration: int, attempt: int) -> None:
        joined.append((iteration, attempt))

    codes: list[int] = []
    # A daemon: should the stage fail, the test fails at once instead of waiting for a follower that never ends.
    follower = threading.Thread(
        target=lambda: codes.extend(join_training(run.root, 1, on_join, poll_s=0.2)), daemon=True
    )
    follower.start()
    run_train_stage(StageContext(run, 1, progress=False))
    follower.join()

    assert joined == [(1, 1)] and codes == [0]
    assert RunDir.open(run.root).manifest.is_done(1, "train")
    log = (run.root / "iter_1" / "train" / "train.log").read_text()
    assert "--machine_rank 0 --main_process_ip 127.0.0.1" in log
    assert read_jsonl(run.root / "iter_1" / "train" / "progress.jsonl")[-1] == {"step": 1, "total": 1, "start": False}
    assert lora_b(lora_weights(run.root / "iter_1" / "train" / "adapter")).abs().max() > 0


def test_join_exits_non_zero_when_the_main_machines_stage_fails(tmp_path: Path, tiny_model: Path) -> None:
    """`selfimprove join` in a subprocess joins attempt 1; the main machine's attempt then fails (recorded in
    the manifest as the pipeline records it): the joiner stops its launcher and exits 1 with the main error."""
    run = training_run(
        tmp_path,
        tiny_model,
        num_processes=2,
        num_machines=2,
        main_process_ip="127.0.0.1",
        main_process_port=free_port(),
        per_device_batch_size=2,
    )
    run.manifest.start(1, "train")
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}
    joiner = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "join", str(run.root), "--machine-rank", "1"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        for line in joiner.stdout:  # the announcement comes right before its launcher starts
            if "train (attempt 1), machine 1" in line:
                break
        run.manifest.fail(1, "train", "TrainError: rank 0 ran out of memory\nlog tail")
        _, stderr = joiner.communicate(timeout=120)
    finally:
        joiner.kill()
    assert joiner.returncode == 1, stderr
    assert "iteration 1's train stage failed on the main machine (attempt 1): TrainError: rank 0 ran out" in stderr
    assert "Traceback" not in stderr
