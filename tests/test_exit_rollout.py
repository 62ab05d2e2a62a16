"""The pieces of ExIt's GRPO rollouts that need no server: rewards, prompts, diversity, config checks."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

from pipeline.config.settings import MOVED_KEYS, ConfigError, TemplatesSection, dump_config, parse_config
from pipeline.methods.exit.buffer import Instance, LearnabilityBuffer, Step
from pipeline.methods.exit.diversity import DiversityScorer, advantage_scales
from pipeline.methods.exit.layout import RolloutServers, read_servers, write_servers
from pipeline.methods.exit.method import ExitMethod
from pipeline.methods.exit.rollout import (
    ADVANTAGE_SCALE,
    FailureCount,
    PromptFitter,
    PromptTooLong,
    StageFailed,
    chat_template_counter,
    improvement_reward,
    instance_messages,
    prompt_index,
)
from pipeline.methods.exit.training import scaled_advantages, summarize
from pipeline.methods.rise.method import RiseMethod
from pipeline.run.layout import RunDir
from pipeline.system.atomic import write_jsonl_atomic
from pipeline.tasks import Task
from pipeline.training.launch import TrainError
from tests.helpers.runs import arithmetic_tasks


def test_fresh_answers_and_binary_verifiers_earn_the_score() -> None:
    assert improvement_reward(1.0, None, binary=False, delta_max=1.0) == 1.0
    assert improvement_reward(0.0, 1.0, binary=True, delta_max=1.0) == 0.0
    assert improvement_reward(1.0, 0.0, binary=True, delta_max=0.5) == 1.0


def test_graded_improvement_steps_earn_the_clipped_gain() -> None:
    assert improvement_reward(0.75, 0.25, binary=False, delta_max=1.0) == 0.5
    assert improvement_reward(0.25, 0.75, binary=False, delta_max=1.0) == 0.0  # never negative
    assert improvement_reward(0.5, 0.25, binary=False, delta_max=0.5) == 0.5
    assert improvement_reward(1.0, 0.0, binary=False, delta_max=0.5) == 1.0  # capped at 1


def test_an_improvement_step_shows_the_history_then_improve_or_diverge() -> None:
    templates = TemplatesSection()
    task = Task("t1", "What is 2 + 2?", 4)
    history = (Step("5", 0.0), Step("\\boxed{3}", 0.0))
    messages = instance_messages(task, Instance("t1", history), templates, history_window=None)
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant", "user"]
    assert messages[0]["content"] == task.prompt and messages[3]["content"] == "\\boxed{3}"
    assert messages[-1]["content"] == templates.improve
    diverging = instance_messages(task, Instance("t1", history, diverge=True), templates, history_window=1)
    assert [m["content"] for m in diverging] == [task.prompt, "\\boxed{3}", templates.diverge]
    assert instance_messages(task, Instance("t1"), templates, None) == [{"role": "user", "content": task.prompt}]


def test_prompts_map_back_to_their_tasks() -> None:
    tasks = [Task("a", "What is 1 + 1?", 2), Task("b", "What is 1 + 1?", 2), Task("c", "What is 3 + 3?", 6)]
    assert {prompt: task.task_id for prompt, task in prompt_index(tasks).items()} == {
        "What is 1 + 1?": "a",
        "What is 3 + 3?": "c",
    }
    with pytest.raises(ValueError, match="share a prompt but not the reference"):
        prompt_index([Task("a", "same", 1), Task("b", "same", 2)])


def test_diversity_factors_are_min_max_normalised_distances() -> None:
    embeddings = np.array([[0.0, 0.0], [0.0, 0.0], [4.0, 0.0]])
    # centroid (4/3, 0): distances 4/3, 4/3, 8/3 -> factors 0, 0, 1
    assert advantage_scales(embeddings) == pytest.approx([0.0, 0.0, 1.0])
    assert advantage_scales(np.ones((3, 2))) == [1.0, 1.0, 1.0]  # all alike: left unscaled


def test_the_packaged_embedding_model_favours_the_odd_answer_out() -> None:
    scales = DiversityScorer().scales(["The answer is 12.", "The answer is 12.", "I like trains very much."])
    assert scales[2] == 1.0 and scales[0] == scales[1] == 0.0


def test_advantages_are_multiplied_by_the_rollouts_factors() -> None:
    advantages = torch.tensor([1.0, -2.0, 0.5])
    inputs = [{ADVANTAGE_SCALE: 0.5}, {ADVANTAGE_SCALE: 1.0}, {}]
    assert scaled_advantages(advantages, inputs).tolist() == [0.5, -2.0, 0.5]


def exit_data(**changes: dict) -> dict:
    data = {"tasks": arithmetic_tasks(), "method": {"name": "exit"}}
    for section, values in changes.items():
        data[section] = {**data.get(section, {}), **values}
    return data


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"rollout": {"backend": "hf"}}, "rollout.backend must be 'vllm'"),
        ({"training": {"finetune": "full"}}, "training.finetune must be 'lora'"),
        ({"rollout": {"sampling": {"temperature": 0}}}, "temperature must be > 0"),
        ({"training": {"per_device_batch_size": 6}}, "multiple of method.group_size (8)"),
        ({"method": {"name": "exit", "sync_every": 2}}, "method.sync_every must be 1: completions from an adapter"),
        (
            {"rollout": {"sampling": {"max_tokens": 2048}}},
            "rollout.sampling.max_tokens (2048) must be below model.max_model_len (2048)",
        ),
    ],
)
def test_exit_configs_that_cannot_train_are_refused(changes: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_config(exit_data(**changes))


def test_a_default_exit_config_is_valid() -> None:
    config = parse_config(exit_data())
    assert config.method.name == "exit" and config.method.group_size == 8


def test_exit_may_serve_its_trained_model_merged_to_the_eval() -> None:
    """Training serves the base and syncs adapters by name; the eval may serve a merged copy (CPU: faster)."""
    assert parse_config(exit_data(rollout={"serve_merged": True})).rollout.serve_merged


def test_exit_refuses_gpus_shared_by_its_servers_and_its_trainer() -> None:
    with pytest.raises(ConfigError, match=re.escape("share GPU(s) [1]")):
        parse_config(exit_data(training={"gpu_ids": [1]}, rollout={"server": {"gpu_ids": [1]}}))


def test_exit_refuses_sharded_weights() -> None:
    with pytest.raises(ConfigError, match="shards the weights"):
        fsdp2 = Path(__file__).resolve().parents[1] / "configs" / "accelerate" / "fsdp2.yaml"
        parse_config(exit_data(training={"accelerate_config": str(fsdp2)}))


RISE_KEYS = {
    "rollout.turns": 4,
    "rollout.samples_per_turn": 2,
    "rollout.feedback": "none",
    "rollout.stop_at_success": False,
    "rollout.teacher": {"url": "http://127.0.0.1:1", "model": "teacher"},
    "training.epochs": 3,
    "training.max_seq_length": 512,
    "training.loss_normalization": "mean",
    "training.train_sampling_strategy": "random",
}


def test_exit_section_has_no_rise_keys() -> None:
    assert set(MOVED_KEYS) == set(RISE_KEYS)
    owned = {new.removeprefix("method.") for new in MOVED_KEYS.values()}
    assert owned <= set(RiseMethod.model_fields) and not owned & set(ExitMethod.model_fields)


@pytest.mark.parametrize("key", sorted(RISE_KEYS))
def test_rise_keys_are_refused_by_name_in_an_exit_config(key: str) -> None:
    section, name = key.split(".")
    with pytest.raises(ConfigError, match=re.escape(f"{key} moved to method.{name}, which method 'exit' does not")):
        parse_config(exit_data(**{section: {name: RISE_KEYS[key]}}))
    with pytest.raises(ConfigError, match=re.escape(f"method.{name}: Extra inputs are not permitted")):
        parse_config(exit_data(method={"name": "exit", name: RISE_KEYS[key]}))


def test_rise_takes_the_keys_exit_has_not() -> None:
    data = exit_data()
    data["method"] = {"name": "rise", "epochs": 3, "max_seq_length": 512}
    assert parse_config(data).method.epochs == 3


def test_a_resolved_exit_config_reads_back() -> None:
    """The run directory's config.yaml holds only keys ExIt's config has, so a resume reads it back."""
    import yaml

    config = parse_config(exit_data())
    dumped = yaml.safe_load(dump_config(config))
    assert "epochs" not in dumped["training"] and "turns" not in dumped["rollout"]
    assert parse_config(dumped) == config


def test_failures_stop_the_stage_past_the_share_with_the_first_error() -> None:
    count = FailureCount(0.1)
    count.add("HTTP 400: first")
    count.check()  # one early failure: judged only from 10 groups on
    for _ in range(8):
        count.add(None)
    count.check()
    count.add(None)
    count.check()  # 1 of 10 is the allowed share, not past it
    count.add("HTTP 400: second")
    with pytest.raises(
        StageFailed,
        match=re.escape(
            "2 of 11 GRPO groups failed, more than method.max_failed_fraction (0.1); the first: HTTP 400: first"
        ),
    ):
        count.check()


def test_failures_already_logged_count_after_a_resume() -> None:
    records = [{"error": None}, {"error": "HTTP 400: old"}]
    count = FailureCount.from_records(0.0, records)
    assert (count.groups, count.failed, count.first_error) == (2, 1, "HTTP 400: old")
    with pytest.raises(StageFailed, match="HTTP 400: old"):
        count.check()  # 0: the first failure stops
    never = FailureCount.from_records(1.0, [{"error": "x"}] * 5)
    never.check()
    assert never.failed == 5


@pytest.fixture(scope="module")
def counter(tiny_model: Path):
    """Prompt tokens by the tiny model's real tokenizer (SmolLM2's, with its chat template)."""
    return chat_template_counter(AutoTokenizer.from_pretrained(tiny_model))


def deep_instance(depth: int) -> Instance:
    return Instance(
        "t1", tuple(Step(f"attempt {i}: " + "the answer is 3 " * 20, 0.0) for i in range(depth)), from_buffer=True
    )


def test_a_deep_instance_is_cut_to_the_token_budget_oldest_first(counter) -> None:
    templates, task = TemplatesSection(), Task("t1", "What is 2 + 2?", 4)
    instance = deep_instance(12)
    full = counter(instance_messages(task, instance, templates, None))
    budget = full // 3
    messages, shown = PromptFitter(templates, None, budget, counter).messages(task, instance)
    assert 1 <= shown < 12 and counter(messages) <= budget
    assert messages == instance_messages(task, instance, templates, shown)  # the newest `shown` attempts
    assert messages[-2]["content"] == instance.history[-1].response
    # one more attempt would not have fitted
    assert counter(instance_messages(task, instance, templates, shown + 1)) > budget


def test_the_history_window_cuts_before_the_budget(counter) -> None:
    templates, task = TemplatesSection(), Task("t1", "What is 2 + 2?", 4)
    messages, shown = PromptFitter(templates, 2, 10_000, counter).messages(task, deep_instance(5))
    assert shown == 2 and len(messages) == len(instance_messages(task, Instance("t1"), templates, None)) + 4


def test_a_prompt_that_cannot_fit_names_the_task(counter) -> None:
    templates = TemplatesSection()
    long_task = Task("long-1", "Add these: " + " + ".join(["1"] * 400), 400)
    fitter = PromptFitter(templates, None, 100, counter)
    with pytest.raises(
        PromptTooLong,
        match=r"task long-1: its prompt alone takes \d+ tokens, over the budget "
        r"of 100 \(model.max_model_len - rollout.sampling.max_tokens\)",
    ):
        fitter.check_task(long_task)
    short = Task("t1", "What is 2 + 2?", 4)
    with pytest.raises(PromptTooLong, match="task t1: its prompt with the attempt being improved"):
        PromptFitter(
            templates, None, counter(instance_messages(short, Instance("t1"), templates, None)), counter
        ).messages(short, deep_instance(3))


def test_the_training_summary_counts_the_failed_groups(tmp_path: Path) -> None:
    groups = tmp_path / "groups.jsonl"
    write_jsonl_atomic(
        groups,
        [
            {"step": 1, "depth": 0, "error": None, "rewards": [1.0, 0.0]},
            {"step": 1, "depth": 1, "error": "GenerationError: HTTP 400: too long", "rewards": None},
            {"step": 2, "depth": 2, "error": None, "rewards": [0.0, 0.0]},
            {"step": 2, "depth": 0, "error": "GenerationError: HTTP 400: later", "rewards": None},
        ],
    )
    summary = summarize(2, groups, LearnabilityBuffer(4), steps=2, seconds=60.0)
    assert (summary["groups"], summary["failed_groups"]) == (2, 2)
    assert summary["first_error"] == "GenerationError: HTTP 400: too long"
    assert summary["depth_histogram"] == {"0": 1, "2": 1} and summary["mean_depth"] == 1.0


@pytest.mark.parametrize("serve_merged", [True, False])
def test_exit_writes_a_merged_copy_for_the_eval_only_when_asked(
    tiny_model: Path, tiny_adapter: Path, tmp_path: Path, serve_merged: bool
) -> None:
    """With rollout.serve_merged the trained adapter is folded into the base for the eval (what the eval then
    serves, pipeline.rollouts.service.iteration_model); without it the eval serves the adapter at runtime."""
    from pipeline.run.layout import RunDir, merged_dir, stage_path
    from pipeline.training.trainer import write_merged_copy

    data = exit_data(rollout={"serve_merged": serve_merged})
    data["run"] = {"output_dir": str(tmp_path), "name": "merged", "report_to": []}
    data["model"] = {"name_or_path": str(tiny_model), "dtype": "float32"}
    run = RunDir.create(parse_config(data))
    write_merged_copy(run, 1, tiny_adapter)
    if serve_merged:
        assert (merged_dir(run, 1) / "config.json").is_file()
        assert list(merged_dir(run, 1).glob("*.safetensors"))
    else:
        assert merged_dir(run, 1) is None and not (stage_path(run.root, 1, "train") / "merged").exists()


def test_the_worker_reads_the_servers_the_stage_wrote_and_refuses_without_them(tmp_path: Path) -> None:
    """The train stage hands the worker its rollout servers in the stage directory, not through the environment."""
    data = exit_data()
    data["run"] = {"output_dir": str(tmp_path), "name": "servers"}
    run = RunDir.create(parse_config(data))
    with pytest.raises(TrainError, match="servers.json, which the train stage writes: run it through the stage"):
        read_servers(run, 1)
    servers = RolloutServers(("http://127.0.0.1:8001", "http://127.0.0.1:8002"), "base")
    write_servers(run, 1, servers)
    assert read_servers(run, 1) == servers
