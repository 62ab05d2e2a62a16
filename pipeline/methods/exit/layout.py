"""Where ExIt's train stage keeps its files, and how it tells the worker where the rollout servers are.

Both the pipeline side (:mod:`pipeline.methods.exit.stages`) and the worker
(:mod:`pipeline.methods.exit.training`) read these, so they import nothing
heavy.
"""

from __future__ import annotations

import os
from pathlib import Path

from pipeline.run.files import BUFFER_NAME, GROUPS_NAME, SYNC_NAME
from pipeline.run.layout import RunDir
from pipeline.training.launch import STAGE, TrainError

URLS_ENV = "SELFIMPROVE_ROLLOUT_URLS"
MODEL_ENV = "SELFIMPROVE_ROLLOUT_MODEL"


def buffer_path(run: RunDir, iteration: int) -> Path:
    return run.stage_dir(iteration, STAGE) / BUFFER_NAME


def groups_path(run: RunDir, iteration: int) -> Path:
    return run.stage_dir(iteration, STAGE) / GROUPS_NAME


def sync_dir(run: RunDir, iteration: int) -> Path:
    return run.stage_dir(iteration, STAGE) / SYNC_NAME


def service_env(urls: list[str], model: str) -> dict[str, str]:
    return {URLS_ENV: ",".join(urls), MODEL_ENV: model}


def service_from_env() -> tuple[list[str], str]:
    """The rollout servers' URLs and base model name the stage passed to the worker."""
    urls, model = os.environ.get(URLS_ENV, ""), os.environ.get(MODEL_ENV, "")
    if not urls or not model:
        raise TrainError(f"the ExIt worker needs {URLS_ENV} and {MODEL_ENV}: run it through the train stage")
    return urls.split(","), model
