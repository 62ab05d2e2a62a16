"""Helpers of the tests that drive whole runs through the CLI in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import yaml

from pipeline.config import parse_config
from pipeline.vllm_server import VLLMServer

REPO = Path(__file__).resolve().parent.parent


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
