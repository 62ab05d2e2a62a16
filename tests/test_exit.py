"""ExIt end to end on the tiny answering model: GRPO through a real vLLM CPU server, kill, resume.

The model is the tiny random-weights model with the ``\\boxed{7}`` LoRA merged
in (``conftest.answering_model``), sampling at temperature 0.6: on the tasks
whose answer is 7 some completions are right and some are not, so groups
have reward variance, the policy gets real gradients and the buffer real
learnability scores. The run is SIGKILLed after its second checkpoint and
resumed; the tests then check what the issue asks: GRPO steps through the
server with the adapter synced every step, the buffer past depth 1, and a
resume that continues from the saved buffer and checkpoint.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
from safetensors.torch import load_file
from transformers import AutoTokenizer

from pipeline.config.prompts import DEFAULT_TEMPLATES
from pipeline.config.settings import TemplatesSection
from pipeline.engine.generation import GenerationError, SamplingParams
from pipeline.engine.service_client import Endpoint, ServiceClient
from pipeline.engine.vllm_server import VLLMServer
from pipeline.methods.exit.buffer import Instance, LearnabilityBuffer, Step
from pipeline.methods.exit.rollout import PromptFitter, chat_template_counter, instance_messages
from pipeline.run.manifest import Manifest, planned_stages
from pipeline.system.atomic import read_jsonl
from pipeline.tasks import Task
from tests.helpers.cli_runs import REPO, cli, cli_env, run_cli, tiny_run_config, write_config

pytestmark = pytest.mark.slow

STEPS = 4
GROUPS_PER_STEP = 2
KILL_AFTER_CHECKPOINT = 2


def exit_config(output_dir: Path, model: Path, name: str, urls: list[str]) -> dict:
    """Two ExIt iterations of 4 GRPO steps (2 groups of 4), a checkpoint every step, buffer from the first item.

    The servers are given by URL (``conftest.answering_server``, one for the
    whole suite), so the stages and the resume do not each pay for a server start.
    """
    config = tiny_run_config(output_dir, model, name, seed=5, eval_limit=4)
    # At temperature 1 the answering model rambles; at 0.6 some of its answers are \boxed{7}.
    config["rollout"] |= {"urls": urls, "history_window": 2, "sampling": {"temperature": 0.6, "max_tokens": 12}}
    config["method"] = {
        "name": "exit",
        "group_size": 4,
        "steps_per_iteration": STEPS,
        "buffer_capacity": 6,
        "min_buffer": 1,
        "select_prob": 0.9,
        "divergence_prob": 0.5,
        "sync_every": 1,
        "diversity_bonus": True,
        "kl_beta": 0.04,
    }
    config["training"] |= {
        "learning_rate": 5e-3,
        "per_device_batch_size": 4 * GROUPS_PER_STEP,
        "save_total_limit": None,
    }
    config["evaluation"] = {
        "turns": 4,
        "samples": 1,
        "feedback": "improve",
        "sampling": {"temperature": 0.6, "max_tokens": 12},
    }
    return config


def wait_for_checkpoint(process: subprocess.Popen, checkpoint: Path) -> None:
    """Poll until the checkpoint is complete (its trainer_state.json is written last)."""
    while not (checkpoint / "trainer_state.json").is_file():
        assert process.poll() is None, f"the run ended before {checkpoint.name}: {process.stderr.read().decode()}"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def resumed_run(answering_model: Path, answering_server: VLLMServer, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """`selfimprove run`, SIGKILLed once iteration 1's checkpoint-2 is complete, then `selfimprove resume`."""
    tmp_path = tmp_path_factory.mktemp("exit")
    config = write_config(
        tmp_path, exit_config(tmp_path / "runs", answering_model, "exit_smoke", [answering_server.url])
    )
    root = tmp_path / "runs" / "exit_smoke"
    train_dir = root / "iter_1" / "train"
    process = subprocess.Popen(
        cli("run", str(config), "--no-progress"),
        cwd=REPO,
        env=cli_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_for_checkpoint(process, train_dir / "checkpoints" / f"checkpoint-{KILL_AFTER_CHECKPOINT}")
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
        process.stderr.close()
    killed = {"groups": read_jsonl(train_dir / "groups.jsonl"), "manifest": Manifest.load(root)}
    time.sleep(1.0)  # let the killed process's children see their parent die
    result = run_cli("resume", str(root), "--no-progress")
    assert result.returncode == 0, result.stdout + result.stderr
    return {"root": root, "killed": killed, "stdout": result.stdout}


def test_the_killed_run_was_mid_training(resumed_run: dict) -> None:
    manifest = resumed_run["killed"]["manifest"]
    assert manifest.is_done(0, "eval") and not manifest.is_done(1, "train")
    assert {r["step"] for r in resumed_run["killed"]["groups"]} >= set(range(1, KILL_AFTER_CHECKPOINT + 1))


def test_resume_finishes_every_stage(resumed_run: dict) -> None:
    root = resumed_run["root"]
    manifest = Manifest.load(root)
    assert [key for key in manifest.stages] == [f"iter_{k}/{s}" for k, s in planned_stages(2, "exit")]
    assert all(record.state.value == "done" for record in manifest.stages.values())
    assert manifest.record(1, "train").attempts == 2
    outputs = manifest.record(1, "train").outputs
    assert {"iter_1/train/buffer.json", "iter_1/train/groups.jsonl"} <= set(outputs)
    assert "m1@t4" in resumed_run["stdout"] and "iteration 2" in resumed_run["stdout"]


def test_iteration_two_continues_the_adapter_and_the_buffer(resumed_run: dict) -> None:
    root = resumed_run["root"]
    first = LearnabilityBuffer.load(root / "iter_1" / "train" / "buffer.json")
    groups = read_jsonl(root / "iter_2" / "train" / "groups.jsonl")
    assert [r["adapter"] for r in groups[:GROUPS_PER_STEP]] == ["exit_smoke-exit2-step0"] * GROUPS_PER_STEP
    # The first groups already draw from iteration 1's buffer (min_buffer is 1, select_prob 0.9).
    assert any(r["from_buffer"] for r in groups[: GROUPS_PER_STEP * 2])
    second = LearnabilityBuffer.load(root / "iter_2" / "train" / "buffer.json")
    assert second.next_seq > first.next_seq >= len(first)


def test_grpo_groups_are_whole_and_each_step_runs_once(resumed_run: dict) -> None:
    """Resuming dropped the log of the steps after checkpoint-2 and redid them: no step lost, none twice."""
    groups = read_jsonl(resumed_run["root"] / "iter_1" / "train" / "groups.jsonl")
    assert Counter(r["step"] for r in groups) == {step: GROUPS_PER_STEP for step in range(1, STEPS + 1)}
    assert all(r["error"] is None and len(r["rewards"]) == 4 for r in groups)
    before_kill = [r for r in resumed_run["killed"]["groups"] if r["step"] <= KILL_AFTER_CHECKPOINT]
    assert [r for r in groups if r["step"] <= KILL_AFTER_CHECKPOINT] == before_kill


def test_resume_restarts_from_the_checkpoints_buffer(resumed_run: dict) -> None:
    """The resumed training took checkpoint-2's buffer (not the newer buffer.json the killed attempt left)
    and went on from it: every entry since was made by a group of steps 3 and 4."""
    train_dir = resumed_run["root"] / "iter_1" / "train"
    at_checkpoint = LearnabilityBuffer.load(
        train_dir / "checkpoints" / f"checkpoint-{KILL_AFTER_CHECKPOINT}" / "buffer.json"
    )
    final = LearnabilityBuffer.load(train_dir / "buffer.json")
    later = [r for r in read_jsonl(train_dir / "groups.jsonl") if r["step"] > KILL_AFTER_CHECKPOINT]
    assert final.next_seq == at_checkpoint.next_seq + sum(r["child_entered"] for r in later)
    last = LearnabilityBuffer.load(train_dir / "checkpoints" / f"checkpoint-{STEPS}" / "buffer.json")
    assert last.to_dict() == final.to_dict()


def test_the_adapter_is_synced_into_the_server_every_step(resumed_run: dict) -> None:
    """Each step's completions came from the adapter saved after the step before.

    The server answered every request by that adapter's name (a name it had
    not loaded would fail the request and leave an error in the group's line).
    """
    groups = read_jsonl(resumed_run["root"] / "iter_1" / "train" / "groups.jsonl")
    assert all(r["adapter"] == f"exit_smoke-exit1-step{r['step'] - 1}" and r["error"] is None for r in groups)
    assert not (resumed_run["root"] / "iter_1" / "train" / "sync").exists()


def test_training_learned_from_real_rewards(resumed_run: dict) -> None:
    """Some group had reward variance, so the LoRA moved off its zero init; rewards are the grader's."""
    root = resumed_run["root"]
    groups = read_jsonl(root / "iter_1" / "train" / "groups.jsonl")
    assert any(r["learnability"] > 0 for r in groups)
    assert all(r["rewards"] == r["scores"] for r in groups)  # the numeric grader is binary: reward = score
    weights = load_file(root / "iter_1" / "train" / "adapter" / "adapter_model.safetensors")
    assert any(name.endswith("lora_B.weight") and tensor.abs().max() > 0 for name, tensor in weights.items())


def test_the_buffer_grows_past_depth_one(resumed_run: dict) -> None:
    root = resumed_run["root"]
    buffer = LearnabilityBuffer.load(root / "iter_1" / "train" / "buffer.json")
    assert 0 < len(buffer) <= 6
    assert max(item.depth for item in buffer.items.values()) >= 2
    summary = json.loads((root / "iter_1" / "train" / "train_summary.json").read_text())
    assert summary["steps"] == STEPS and summary["groups"] == STEPS * GROUPS_PER_STEP
    assert summary["buffer"]["size"] == len(buffer)
    groups = read_jsonl(root / "iter_1" / "train" / "groups.jsonl")
    assert summary["mean_depth"] == pytest.approx(sum(r["depth"] for r in groups) / len(groups))
    assert any(r["from_buffer"] and r["depth"] >= 1 for r in groups)


def test_the_diversity_bonus_scales_advantages(resumed_run: dict) -> None:
    groups = read_jsonl(resumed_run["root"] / "iter_1" / "train" / "groups.jsonl")
    for record in groups:
        scales = record["advantage_scale"]
        assert len(scales) == 4 and all(0.0 <= s <= 1.0 for s in scales)
        assert max(scales) == 1.0


def test_eval_runs_improvement_steps_and_the_report_marks_training_depth(resumed_run: dict) -> None:
    root = resumed_run["root"]
    records = read_jsonl(root / "iter_1" / "eval" / "rollouts.jsonl")
    assert all(len(r["turns"]) == 4 for r in records)
    feedback = {t["feedback"] for r in records for t in r["turns"][:-1]}
    assert feedback == {DEFAULT_TEMPLATES["improve"]}
    assert (root / "accuracy_by_turn.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_status_shows_the_buffer(resumed_run: dict) -> None:
    result = run_cli("status", str(resumed_run["root"]))
    assert result.returncode == 0, result.stderr
    assert "ExIt buffer" in result.stdout and "/6" in result.stdout


def test_two_training_processes_share_each_group(
    answering_model: Path, answering_server: VLLMServer, tmp_path: Path
) -> None:
    """2 processes x 2 completions: every group of 4 straddles both, the main process generates and scores it."""
    data = exit_config(tmp_path / "runs", answering_model, "exit_ddp", [answering_server.url])
    data["run"]["iterations"] = 1
    data["method"].update(steps_per_iteration=2, diversity_bonus=False)
    data["training"].update(num_processes=2, per_device_batch_size=2)
    result = run_cli("train", str(write_config(tmp_path, data)), "--iteration", "1", "--no-progress")
    assert result.returncode == 0, result.stdout + result.stderr
    train_dir = tmp_path / "runs" / "exit_ddp" / "iter_1" / "train"
    groups = read_jsonl(train_dir / "groups.jsonl")
    assert [(r["step"], len(r["rewards"])) for r in groups] == [(1, 4), (2, 4)]  # one whole group per step
    assert all(r["error"] is None for r in groups)
    # Each process saved its own RNG state into the checkpoint: two processes trained.
    assert {p.name for p in (train_dir / "checkpoints" / "checkpoint-2").glob("rng_state_*.pth")} == {
        "rng_state_0.pth",
        "rng_state_1.pth",
    }
    assert json.loads((train_dir / "train_summary.json").read_text())["groups"] == 2
    assert (train_dir / "train.log").read_text(errors="replace").count("exit step 1:") == 1  # the main one only


def test_the_buffer_is_tracked_at_every_grpo_step(resumed_run: dict) -> None:
    """TensorBoard (the default tracker) has the buffer's size at every step of both iterations, on one axis."""
    from pipeline.run.layout import RunDir
    from tests.helpers.tracker_files import scalars

    run = RunDir.open(resumed_run["root"])
    sizes = scalars(run, "train/buffer/size")
    # The resume repeats the steps logged after the checkpoint it restarted from; each step is there.
    assert {step for step, _ in sizes} == set(range(1, 2 * STEPS + 1))
    final = LearnabilityBuffer.load(run.root / "iter_2" / "train" / "buffer.json").stats()
    assert max(sizes)[1] == final["size"]
    assert {step for step, _ in scalars(run, "train/buffer/score_q50")} == set(range(1, 2 * STEPS + 1))


def test_a_deep_instance_is_cut_to_fit_and_the_server_takes_it(
    answering_model: Path, answering_server: VLLMServer
) -> None:
    """A history far longer than the server's 1024 tokens: sent whole, vLLM refuses it (HTTP 400); cut by
    the fitter to max_model_len - max_tokens, the server answers, and counts the prompt's tokens as we do."""
    max_tokens, templates = 12, TemplatesSection()
    counter = chat_template_counter(AutoTokenizer.from_pretrained(answering_model))
    task = Task("deep", "What is 3 + 4?", 7)
    instance = Instance(
        "deep", tuple(Step(f"attempt {i}: " + "I think it is 12. " * 30, 0.0) for i in range(12)), from_buffer=True
    )
    whole = instance_messages(task, instance, templates, None)
    assert counter(whole) > 1024
    messages, shown = PromptFitter(templates, None, 1024 - max_tokens, counter).messages(task, instance)
    assert 1 <= shown < instance.depth

    async def send(conversation: list) -> list:
        client = ServiceClient([Endpoint(answering_server.url)], "base", max_retries=0)
        try:
            return await client.chat(conversation, n=2, params=SamplingParams(0.6, 1.0, max_tokens), seed=1)
        finally:
            await client.aclose()

    with pytest.raises(GenerationError, match="HTTP 400"):
        asyncio.run(send(whole))
    completions = asyncio.run(send(messages))
    assert len(completions) == 2
    assert all(len(c.prompt_token_ids) == counter(messages) <= 1024 - max_tokens for c in completions)


def write_long_tasks(path: Path) -> Path:
    """Tasks whose prompts (about 1,300 tokens) are longer than the module server's 1024-token context."""
    filler = "Read the numbers and ignore them: " + " ".join(str(i) for i in range(600)) + ". "
    rows = [{"prompt": filler + f"What is {a} + {b}?", "answer": a + b} for a, b in [(3, 4), (2, 5)]]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_a_server_that_refuses_every_request_stops_the_stage(
    answering_model: Path, answering_server: VLLMServer, tmp_path: Path
) -> None:
    """A real fault, not a mock: the config says model.max_model_len 4096, but the server given by URL was
    started with 1024, so it answers every long prompt with HTTP 400. Past method.max_failed_fraction the
    stage stops with vLLM's own message instead of training on empty groups, and the log counts the failures."""
    data = exit_config(tmp_path / "runs", answering_model, "exit_refused", [answering_server.url])
    data["run"]["iterations"] = 1
    data["model"]["max_model_len"] = 4096
    data["tasks"]["train"]["options"]["train_path"] = str(write_long_tasks(tmp_path / "long.jsonl"))
    data["method"].update(diversity_bonus=False, max_failed_fraction=0.5)  # judged from 2 groups: one step
    result = run_cli("train", str(write_config(tmp_path, data)), "--iteration", "1", "--no-progress")
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "2 of 2 GRPO groups failed, more than method.max_failed_fraction (0.5); the first:" in output
    assert "HTTP 400" in output and "1024" in output  # the server's message names its context length
    groups = read_jsonl(tmp_path / "runs" / "exit_refused" / "iter_1" / "train" / "groups.jsonl")
    assert [(r["step"], r["error"] is not None) for r in groups] == [(1, True), (1, True)]


def test_group_lines_show_the_rescoring_the_buffers_scores_and_prompts_that_fit(resumed_run: dict) -> None:
    """Drawn items are re-scored by their new groups; every line has the buffer's S quantiles after it, and
    every prompt stayed within max_model_len - max_tokens with at most history_window attempts shown."""
    root = resumed_run["root"]
    groups = [r for k in (1, 2) for r in read_jsonl(root / f"iter_{k}" / "train" / "groups.jsonl")]
    assert any(r["rescored_from"] is not None for r in groups if r["from_buffer"])
    assert all(r["rescored_from"] is None for r in groups if not r["from_buffer"])
    assert all(set(r["buffer_scores"]) == {"q0", "q25", "q50", "q75", "q100"} for r in groups)
    assert all(0.0 <= r["buffer_scores"]["q100"] <= 0.25 and r["learnability"] <= 0.25 for r in groups)
    assert all(r["shown"] <= 2 and r["prompt_tokens"] <= 1024 - 12 for r in groups)
    summary = json.loads((root / "iter_1" / "train" / "train_summary.json").read_text())
    assert (summary["failed_groups"], summary["first_error"]) == (0, None)
