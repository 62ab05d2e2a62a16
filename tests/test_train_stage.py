"""The train stage on the tiny model: real TRL, real ``accelerate launch`` on the CPU, real kills.

One module-scoped run trains iteration 1 uninterrupted; the other tests
reuse it (read-only, or as a copy) as the reference their runs must match.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from transformers import TrainerControl, TrainerState, TrainingArguments

from pipeline.engine.stage_context import StageContext
from pipeline.methods.rise.stages import run_train_stage
from pipeline.run.layout import RunDir
from pipeline.run.manifest import StageState
from pipeline.system.atomic import file_digest
from pipeline.training.launch import TrainError
from pipeline.training.progress import ProgressFollower, StepProgress, append_progress
from pipeline.training.trainer import ProgressWriter
from tests.helpers.cli_runs import REPO, default_sigint
from tests.helpers.training import (
    ROWS,
    attempts,
    checkpoint_step,
    finish_curate,
    first_steps,
    lora_b,
    lora_weights,
    training_run,
    wait_until_gone,
)


@pytest.fixture(scope="module")
def trained_run(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> RunDir:
    """Iteration 1 trained without interruption (LoRA from the base model)."""
    run = training_run(tmp_path_factory.mktemp("trained"), tiny_model)
    finish_curate(run, 1)
    run_train_stage(StageContext(run, 1, progress=False))
    return run


@pytest.mark.slow
def test_stage_trains_a_loadable_adapter_and_records_it(trained_run: RunDir, tiny_model: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    adapter = trained_run.root / "iter_1" / "train" / "adapter"
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), adapter)
    assert lora_b({n: p for n, p in model.named_parameters() if "lora_" in n}).abs().max() > 1e-3
    record = trained_run.manifest.record(1, "train")
    assert record.state is StageState.DONE and record.attempts == 1
    adapter_files = {str(p.relative_to(trained_run.root)) for p in adapter.rglob("*") if p.is_file()}
    assert set(record.outputs) == adapter_files | {"iter_1/train/train_summary.json"}  # every file it publishes
    assert "iter_1/train/adapter/chat_template.jinja" in adapter_files
    summary = json.loads((trained_run.root / "iter_1" / "train" / "train_summary.json").read_text())
    assert summary["examples"] == ROWS and summary["steps"] == ROWS
    assert math.isfinite(summary["final_loss"]) and summary["train_tokens_per_s"] > 0
    checkpoints = trained_run.root / "iter_1" / "train" / "checkpoints"
    assert {p.name for p in checkpoints.glob("checkpoint-*")} == {f"checkpoint-{s}" for s in range(2, ROWS + 1, 2)}
    assert not list(adapter.parent.glob(".adapter.partial"))


@pytest.mark.slow
def test_rerun_of_a_done_stage_does_nothing(trained_run: RunDir) -> None:
    stage = trained_run.root / "iter_1" / "train"
    files = [stage / "adapter" / "adapter_model.safetensors", stage / "train_summary.json", stage / "train.log"]
    before = [(p.stat().st_mtime_ns, file_digest(p)) for p in files]
    assert run_train_stage(StageContext(RunDir.open(trained_run.root), 1, progress=False)) == stage / "adapter"
    assert [(p.stat().st_mtime_ns, file_digest(p)) for p in files] == before
    assert RunDir.open(trained_run.root).manifest.record(1, "train").attempts == 1


def test_progress_follower_skips_earlier_attempts_and_waits_for_whole_lines(tmp_path: Path) -> None:
    path = tmp_path / "progress.jsonl"
    assert ProgressFollower(path).latest() is None  # no file yet
    append_progress(path, StepProgress(4, 10))  # an earlier attempt's
    follower = ProgressFollower(path)
    assert follower.latest() is None
    append_progress(path, StepProgress(2, 10, start=True))
    append_progress(path, StepProgress(3, 10))
    with open(path, "a") as writer:
        writer.write('{"step": 4, "total"')  # a line not yet complete
        writer.flush()
        assert follower.latest() == StepProgress(3, 10)
        writer.write(': 10, "start": false}\n')
        writer.flush()
        assert follower.latest() == StepProgress(4, 10)
        assert follower.latest() is None  # nothing new


def test_progress_writer_appends_the_start_and_every_step_from_the_main_process(tmp_path: Path) -> None:
    path = tmp_path / "progress.jsonl"
    writer, follower = ProgressWriter(path), ProgressFollower(path)
    args, control = TrainingArguments(tmp_path / "out", report_to=[]), TrainerControl()
    writer.on_train_begin(args, TrainerState(global_step=6, max_steps=12), control)
    assert follower.latest() == StepProgress(6, 12, start=True)
    writer.on_step_end(args, TrainerState(global_step=7, max_steps=12), control)
    assert follower.latest() == StepProgress(7, 12)
    writer.on_step_end(args, TrainerState(global_step=8, max_steps=12, is_world_process_zero=False), control)
    assert follower.latest() is None  # another process's step is not written
    assert first_steps(tmp_path) == [6]


def test_refuses_when_curate_is_not_done(tmp_path: Path, tiny_model: Path) -> None:
    run = training_run(tmp_path, tiny_model)
    with pytest.raises(TrainError, match="iteration 1's curate stage is not done"):
        run_train_stage(StageContext(run, 1, progress=False))
    record = RunDir.open(run.root).manifest.record(1, "train")
    assert record.state is StageState.FAILED and "curate stage is not done" in record.error
    assert not (run.root / "iter_1" / "train" / "train.log").exists()  # refused before launching


@pytest.mark.slow
def test_qlora_trains_an_adapter_on_the_4bit_base(tmp_path: Path, tiny_model: Path) -> None:
    run = training_run(tmp_path, tiny_model, finetune="qlora")
    finish_curate(run, 1)
    adapter = run_train_stage(StageContext(run, 1, progress=False))
    assert adapter == run.root / "iter_1" / "train" / "adapter"
    assert lora_b(lora_weights(adapter)).abs().max() > 0  # trained: LoRA's B starts at zero
    assert RunDir.open(run.root).manifest.is_done(1, "train")


@pytest.mark.slow
def test_train_from_previous_continues_iteration_1s_adapter(trained_run: RunDir, tmp_path: Path) -> None:
    shutil.copytree(trained_run.root, tmp_path / "r")
    run = RunDir.open(tmp_path / "r")
    # A learning rate too small to move the weights visibly in 12 steps: iteration 2's adapter must be
    # iteration 1's (trained, non-zero B), where an adapter trained from scratch would have B close to 0.
    run.amend(["method.train_from=previous", "training.learning_rate=1e-7"])  # what `resume --set` does
    finish_curate(run, 2)
    adapter = run_train_stage(StageContext(RunDir.open(run.root), 2, progress=False))
    assert adapter == run.root / "iter_2" / "train" / "adapter"
    first, second = lora_weights(run.root / "iter_1" / "train" / "adapter"), lora_weights(adapter)
    assert first.keys() == second.keys()
    assert lora_b(first).abs().max() > 1e-3
    for name in first:
        torch.testing.assert_close(second[name], first[name], atol=1e-5, rtol=0)
    assert not torch.equal(lora_b(second), lora_b(first))  # it did train


@pytest.mark.slow
def test_full_finetuning_under_the_cpu_accelerate_config_writes_a_servable_model(
    tmp_path: Path, tiny_model: Path
) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cpu_config = REPO / "configs" / "accelerate" / "cpu.yaml"
    run = training_run(tmp_path, tiny_model, finetune="full", accelerate_config=str(cpu_config), save_steps=ROWS)
    finish_curate(run, 1)
    model_dir = run_train_stage(StageContext(run, 1, progress=False))
    assert model_dir == run.root / "iter_1" / "train" / "model"
    assert "--config_file" in attempts(model_dir.parent / "train.log")[0].splitlines()[0]
    trained = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).state_dict()
    base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).state_dict()
    assert any(not torch.equal(trained[name], base[name]) for name in base)
    assert AutoTokenizer.from_pretrained(model_dir).chat_template
    outputs = set(RunDir.open(run.root).manifest.record(1, "train").outputs)
    assert {"iter_1/train/model/config.json", "iter_1/train/model/model.safetensors"} <= outputs


STAGE_SCRIPT = (
    "import sys; from pipeline.run.layout import RunDir; from pipeline.methods.rise.stages import run_train_stage; "
    "from pipeline.engine.stage_context import StageContext; "
    "run_train_stage(StageContext(RunDir.open(sys.argv[1]), 1, progress=False))"
)


def interrupt_after_checkpoint(run: RunDir, sig: signal.Signals, after_step: int) -> None:
    """Run the stage in a pipeline process; send it ``sig`` once a checkpoint later than ``after_step`` is complete."""
    pipeline = subprocess.Popen(
        [sys.executable, "-c", STAGE_SCRIPT, str(run.root)], cwd=REPO, preexec_fn=default_sigint
    )
    while checkpoint_step(run) <= after_step:
        assert pipeline.poll() is None, "the stage ended before the checkpoint"
        time.sleep(0.02)
    os.kill(pipeline.pid, sig)
    assert pipeline.wait() != 0


@pytest.mark.slow
def test_interrupted_stage_resumes_from_its_checkpoints_and_matches_an_uninterrupted_run(
    trained_run: RunDir, tmp_path: Path, tiny_model: Path
) -> None:
    run = training_run(tmp_path, tiny_model)  # the same config and data as trained_run
    finish_curate(run, 1)
    stage = run.root / "iter_1" / "train"
    # Ctrl-C: the stage stops its launcher and worker and records the failure.
    interrupt_after_checkpoint(run, signal.SIGINT, after_step=0)
    assert wait_until_gone(str(run.root)) == []
    record = RunDir.open(run.root).manifest.record(1, "train")
    assert record.state is StageState.FAILED and record.error.startswith("KeyboardInterrupt")
    first_resume = checkpoint_step(run)
    # SIGKILL: the pipeline runs no code; the launcher and worker die with it all the same.
    interrupt_after_checkpoint(run, signal.SIGKILL, after_step=first_resume)
    assert wait_until_gone(str(run.root)) == []
    second_resume = checkpoint_step(run)
    assert RunDir.open(run.root).manifest.record(1, "train").state is StageState.RUNNING
    assert not (stage / "adapter").exists()

    run_train_stage(StageContext(RunDir.open(run.root), 1, progress=False))

    assert 0 < first_resume < second_resume < ROWS
    assert len(attempts(stage / "train.log")) == 3
    assert first_steps(stage) == [0, first_resume, second_resume]
    record = RunDir.open(run.root).manifest.record(1, "train")
    assert record.state is StageState.DONE and record.attempts == 3
    assert json.loads((stage / "train_summary.json").read_text())["steps"] == ROWS
    resumed, whole = lora_weights(stage / "adapter"), lora_weights(trained_run.root / "iter_1" / "train" / "adapter")
    assert resumed.keys() == whole.keys()
    for name in whole:
        torch.testing.assert_close(resumed[name], whole[name], atol=1e-6, rtol=1e-5)
