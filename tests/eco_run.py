"""A tiny RISE run with trackers, interrupted once and resumed: what the tracking and export tests read.

Two iterations on the answering model (it says ``\\boxed{7}``; see
``conftest.py``) against one vLLM server given by URL, so that the stages do
not each start their own. The run is stopped by a KeyboardInterrupt (the
path Ctrl-C takes) as iteration 2's rollout is about to start, then resumed
by a fresh ``run_loop`` on the reopened run directory, as ``selfimprove
resume`` does.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.config import parse_config
from pipeline.loop import run_loop
from pipeline.run_dir import RunDir
from pipeline.vllm_server import VLLMServer
from tests.run_helpers import write_tasks

TURNS = 3
ITERATIONS = 2


def tracked_config(root: Path, model: Path, url: str, report_to: list[str]) -> dict:
    tasks = str(write_tasks(root / "tasks.jsonl"))
    return {
        "run": {"name": "tracked", "output_dir": str(root / "runs"), "seed": 3, "iterations": ITERATIONS,
                "report_to": report_to},
        "model": {"name_or_path": str(model), "dtype": "float32", "max_model_len": 1024},
        "rollout": {
            "urls": [url], "turns": TURNS, "samples_per_turn": 2, "max_concurrency": 16,
            "sampling": {"temperature": 1.0, "max_tokens": 12},
        },
        "tasks": {
            "train": {"source": "jsonl", "options": {"train_path": tasks}},
            "eval": {"source": "jsonl", "options": {"eval_path": tasks}, "limit": 5},
        },
        "grader": {"name": "numeric", "workers": 1},
        "method": {"name": "rise", "selection": "all", "accumulate": True, "train_from": "base"},
        "training": {
            "lora_r": 8, "lora_alpha": 16, "lora_dropout": 0.0, "learning_rate": 1e-3, "epochs": 1,
            "per_device_batch_size": 4, "max_seq_length": 256, "save_steps": 1,
        },
        "evaluation": {"turns": TURNS, "samples": 1, "sampling": {"temperature": 1.0, "max_tokens": 12}},
    }


class Interrupted(KeyboardInterrupt):
    """Raised by the first run's ``on_stage`` where it stops."""


def interrupted_then_resumed(root: Path, model: Path, server: VLLMServer, report_to: list[str]) -> RunDir:
    """The run of the module doc; returns it reopened after the resume finished."""
    run = RunDir.create(parse_config(tracked_config(root, model, server.url, report_to)))

    def stop_before_iteration_2(iteration: int, stage: str) -> None:
        if iteration == 2:
            raise Interrupted(f"stopped before iter_{iteration}/{stage}")

    try:
        run_loop(run, show_progress=False, on_stage=stop_before_iteration_2)
    except Interrupted:
        pass
    else:
        raise AssertionError("the first run_loop was expected to stop before iteration 2")
    resumed = RunDir.open(run.root)
    run_loop(resumed, show_progress=False)
    return RunDir.open(run.root)
