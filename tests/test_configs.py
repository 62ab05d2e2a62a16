"""The shipped configs: they load offline, and the real-model ones say what their comments claim."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.config.settings import load_config
from pipeline.methods.exit.method import ExitMethod
from pipeline.methods.rise.method import RiseMethod

REPO = Path(__file__).resolve().parents[1]
SHIPPED = sorted((REPO / "configs").glob("*.yaml"))
# What would download a dataset or model: loading a config must import neither.
DOWNLOADERS = ("datasets", "huggingface_hub")
LOAD_ALL = """
import json, sys
from pipeline.config.settings import load_config
for path in sys.argv[1:]:
    load_config(path)
print(json.dumps(sorted(name for name in {downloaders} if name in sys.modules)))
"""


def test_every_shipped_config_loads_without_touching_the_hub() -> None:
    """In a fresh interpreter (this one may have imported `datasets` for other tests), offline."""
    script = LOAD_ALL.format(downloaders=DOWNLOADERS)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-c", script, *map(str, SHIPPED)], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []


@pytest.mark.parametrize(
    ("name", "preset", "grader"), [("rise_gsm8k", "gsm8k", "numeric"), ("rise_math", "math", "math")]
)
def test_real_model_configs_are_rise_on_their_dataset(name: str, preset: str, grader: str) -> None:
    config = load_config(REPO / "configs" / f"{name}.yaml")
    assert isinstance(config.method, RiseMethod)
    assert (config.method.mode, config.method.selection, config.method.tau) == ("self_distill", "all", 0.4)
    assert config.model.name_or_path == "meta-llama/Llama-3.1-8B-Instruct"
    assert config.model.dtype == "bfloat16"
    assert config.training.finetune == "lora"
    for section in (config.tasks.train, config.tasks.eval):
        assert (section.source, section.options) == ("hf", {"preset": preset})
    assert config.grader.name == grader
    assert (config.evaluation.turns, config.evaluation.feedback) == (5, "binary")
    assert config.run.iterations == 2
    assert config.method.samples_per_turn == [1, 16]  # the reference code's --num_of_samples 1 16
    # Evaluation keeps only the last attempt in the prompt, as the reference code's context window does.
    assert config.rollout.history_window == 1


def test_exit_math_config_mirrors_the_papers_math_setup() -> None:
    config = load_config(REPO / "configs" / "exit_math.yaml")
    method = config.method
    assert isinstance(method, ExitMethod)
    assert config.model.name_or_path == "meta-llama/Llama-3.2-3B-Instruct"
    assert (method.buffer_capacity, method.min_buffer, method.select_prob) == (512, 128, 0.5)
    assert (method.divergence_prob, method.group_size, config.training.learning_rate) == (0.2, 8, 1e-6)
    assert (config.evaluation.turns, config.evaluation.feedback) == (17, "improve")  # K = 16 steps
    assert config.grader.name == "math"
    for section in (config.tasks.train, config.tasks.eval):
        assert (section.source, section.options) == ("hf", {"preset": "math"})


def test_exit_quickstart_runs_on_the_embedded_model_on_cpu() -> None:
    config = load_config(REPO / "configs" / "exit_quickstart.yaml")
    assert isinstance(config.method, ExitMethod)
    assert config.model.name_or_path == "embedded:smollm2-135m-instruct"
    assert config.tasks.train.source == "arithmetic" and config.grader.name == "numeric"
    assert config.evaluation.feedback == "improve" and config.training.accelerate_config is None
    assert config.rollout.serve_merged  # CPU: the eval serves merged weights, not a runtime LoRA
