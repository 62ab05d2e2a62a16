"""The pieces of ExIt's GRPO rollouts that need no server: rewards, prompts, diversity, config checks."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.methods.exit.buffer import Instance, Step
from pipeline.config.settings import ConfigError, TemplatesSection, parse_config
from pipeline.methods.exit.diversity import DiversityScorer, advantage_scales
from pipeline.methods.exit.rollout import ADVANTAGE_SCALE, improvement_reward, instance_messages, prompt_index
from pipeline.methods.exit.training import scaled_advantages
from pipeline.tasks import Task


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
        "What is 1 + 1?": "a", "What is 3 + 3?": "c"}
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
    data = {"tasks": {"train": {"source": "arithmetic"}, "eval": {"source": "arithmetic"}}, "method": {"name": "exit"}}
    for section, values in changes.items():
        data[section] = {**data.get(section, {}), **values}
    return data


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"rollout": {"backend": "hf"}}, "rollout.backend must be 'vllm'"),
        ({"training": {"finetune": "full"}}, "training.finetune must be 'lora'"),
        ({"rollout": {"serve_merged": True}}, "rollout.serve_merged must be false"),
        ({"rollout": {"samples_per_turn": 1, "sampling": {"temperature": 0}}}, "temperature must be > 0"),
        ({"training": {"per_device_batch_size": 6}}, "multiple of method.group_size (8)"),
    ],
)
def test_exit_configs_that_cannot_train_are_refused(changes: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_config(exit_data(**changes))


def test_a_default_exit_config_is_valid() -> None:
    config = parse_config(exit_data())
    assert config.method.name == "exit" and config.method.group_size == 8


def test_exit_refuses_gpus_shared_by_its_servers_and_its_trainer() -> None:
    with pytest.raises(ConfigError, match=re.escape("share GPU(s) [1]")):
        parse_config(exit_data(training={"gpu_ids": [1]}, rollout={"server": {"gpu_ids": [1]}}))


def test_exit_refuses_sharded_weights() -> None:
    with pytest.raises(ConfigError, match="shards the weights"):
        fsdp2 = Path(__file__).resolve().parents[1] / "configs" / "accelerate" / "fsdp2.yaml"
        parse_config(exit_data(training={"accelerate_config": str(fsdp2)}))
