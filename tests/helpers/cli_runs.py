"""Helpers of the tests that drive whole runs through the CLI in a subprocess."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml

from pipeline.config.settings import parse_config
from pipeline.engine.vllm_server import VLLMServer

REPO = Path(__file__).resolve().parents[2]


def write_tasks(path: Path) -> Path:
    """6 addition tasks, half of whose answers are 7 (the answering model's favourite)."""
    pairs = [(3, 4), (10, 11), (2, 5), (6, 8), (1, 6), (20, 2)]
    rows = [{"prompt": f"What is {a} + {b}?", "answer": a + b} for a, b in pairs]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def write_config(tmp_path: Path, data: dict) -> Path:
    parse_config(data)  # fail here, not in the subprocess, on a bad smoke config
    path = tmp_path / f"{data['run']['name']}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "pipeline.cli", *args]


def default_sigint() -> None:
    """Undo an inherited SIG_IGN (a test run started in the background by a non-interactive shell):
    Python only turns SIGINT into KeyboardInterrupt when it starts with the default handler."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def cli_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "120"}


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(cli(*args), cwd=REPO, capture_output=True, text=True, env=cli_env())


@contextmanager
def serving(model: Path, data: dict, log_path: Path) -> Iterator[VLLMServer]:
    """A vLLM server on ``model`` with a run config's server settings, for runs that use it by URL."""
    config = parse_config(data)
    with VLLMServer(str(model), config.model, config.rollout.server, log_path) as server:
        yield server


SMOKE_TURNS = 3


def tiny_run_config(output_dir: Path, model: Path, name: str, seed: int, eval_limit: int) -> dict:
    """What the configs of the tests that run the CLI share: two iterations of the tiny model on the CPU, the
    6 tasks of :func:`write_tasks`, numeric grading, a small LoRA saved every step."""
    tasks = str(write_tasks(output_dir.parent / "tasks.jsonl"))
    return {
        "run": {"name": name, "output_dir": str(output_dir), "seed": seed, "iterations": 2},
        "model": {"name_or_path": str(model), "dtype": "float32", "max_model_len": 1024},
        "rollout": {
            "max_concurrency": 16,
            "server": {"cpu_kvcache_space_gib": 1, "max_num_seqs": 32, "startup_timeout_s": 300},
        },
        "tasks": {
            "train": {"source": "jsonl", "options": {"train_path": tasks}},
            "eval": {"source": "jsonl", "options": {"eval_path": tasks}, "limit": eval_limit},
        },
        "grader": {"name": "numeric", "workers": 1},
        "training": {"lora_r": 8, "lora_alpha": 16, "lora_dropout": 0.0, "save_steps": 1},
    }


def smoke_config(output_dir: Path, model: Path, name: str, urls: list[str] | None = None) -> dict:
    """Two RISE iterations on 6 train and 5 eval tasks; seeded sampling so that reruns reproduce records."""
    config = tiny_run_config(output_dir, model, name, seed=3, eval_limit=5)
    config["rollout"] |= {"urls": urls or [], "sampling": {"temperature": 1.0, "max_tokens": 12}}
    config["method"] = {
        "name": "rise",
        "selection": "all",
        "accumulate": True,
        "train_from": "base",
        "turns": SMOKE_TURNS,
        "samples_per_turn": 2,
        "epochs": 1,
        "max_seq_length": 256,
    }
    config["training"] |= {"learning_rate": 1e-3, "per_device_batch_size": 4}
    config["evaluation"] = {"turns": SMOKE_TURNS, "samples": 1, "sampling": {"temperature": 1.0, "max_tokens": 12}}
    return config
