"""Helpers of the tests that run the train stage on the tiny model: run directories, curated data, processes."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from pipeline.run.files import PROGRESS_NAME
from pipeline.run.layout import RunDir
from pipeline.system.atomic import read_jsonl, write_jsonl_atomic
from pipeline.training.checkpoints import checkpoint_step as step_of_checkpoint
from pipeline.training.checkpoints import last_checkpoint
from tests.helpers.runs import make_run

ROWS = 12  # batch size 1: 12 optimizer steps, a checkpoint every 2
TRAINING = {
    "lora_r": 4,
    "lora_alpha": 8,
    "lora_dropout": 0.0,
    "learning_rate": 1e-2,
    "per_device_batch_size": 1,
    "save_steps": 2,
    "save_total_limit": None,  # keep every checkpoint: the tests look at where each attempt resumed
}


RISE = {"name": "rise", "epochs": 1, "max_seq_length": 128}
"""RISE's SFT settings for the tiny model: one epoch, short examples."""


def training_run(root: Path, model: Path, method: dict[str, Any] | None = None, **training: Any) -> RunDir:
    """A run that trains ``model`` with TRAINING's settings, ``training`` over them, and ``method`` (RISE's)."""
    return make_run(
        root,
        run={"seed": 0},
        model={"name_or_path": str(model)},
        method=method or RISE,
        training={**TRAINING, **training},
    )


def finish_curate(run: RunDir, iteration: int, rows: int = ROWS) -> None:
    """A hand-built training set of RISE second turns (history, feedback, target), recorded as curated.

    Odd rows weigh exp(1 / 0.4), even rows 1, so that the weighting shows in the loss.
    """
    examples = [
        {
            "example_id": f"{iteration}-{i}",
            "source": "rollout",
            "iteration": iteration,
            "task_id": f"t{i}",
            "key": f"t{i}/0",
            "turn": 2,
            "messages": [
                {"role": "user", "content": f"What is {i} + {i + 3}?"},
                {"role": "assistant", "content": f"\\boxed{{{2 * i}}}"},
                {"role": "user", "content": "Your answer is incorrect. Please try again."},
            ],
            "completion": f"{i} + {i + 3} = \\boxed{{{2 * i + 3}}}",
            "reward": 1.0,
            "weight": math.exp(1.0 / 0.4) if i % 2 else 1.0,
        }
        for i in range(rows)
    ]
    path = run.stage_dir(iteration, "curate") / "train.jsonl"
    write_jsonl_atomic(path, examples)
    run.manifest.start(iteration, "curate")
    run.manifest.complete(iteration, "curate", [path])


def lora_weights(adapter: Path) -> dict[str, torch.Tensor]:
    return load_file(adapter / "adapter_model.safetensors")


def lora_b(weights: dict[str, torch.Tensor]) -> torch.Tensor:
    """All lora_B matrices, flattened: zero at initialisation, so non-zero only by training."""
    return torch.cat([w.flatten() for name, w in sorted(weights.items()) if "lora_B" in name])


def attempts(log: Path) -> list[str]:
    """The log's text per launch, oldest first."""
    return log.read_text(errors="replace").split("=== train iteration")[1:]


def first_steps(stage: Path) -> list[int]:
    """The step each attempt's training started at (0, or the step of the checkpoint it resumed from), oldest first."""
    return [line["step"] for line in read_jsonl(stage / PROGRESS_NAME) if line["start"]]


def checkpoint_step(run: RunDir) -> int:
    """The step of iteration 1's newest complete checkpoint (0 when there is none): where training resumes."""
    return step_of_checkpoint(last_checkpoint(run.root / "iter_1" / "train" / "checkpoints"))


def processes_mentioning(text: str) -> list[int]:
    """Pids whose command line contains ``text``: the stage's launcher and worker name the run directory."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and text.encode() in (entry / "cmdline").read_bytes():
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def wait_until_gone(text: str, bound_s: float = 60.0) -> list[int]:
    """The processes still mentioning ``text`` once they are all gone or ``bound_s`` has passed.

    They get SIGTERM at once; the bound only keeps a broken implementation
    from hanging the suite.
    """
    deadline = time.monotonic() + bound_s
    while (left := processes_mentioning(text)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left
