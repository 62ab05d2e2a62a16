"""ExIt's train stage, the pipeline side: serve the policy while the GRPO worker trains it.

GRPO generates while it trains, so the stage starts the rollout service
(vLLM on the base model, or the servers of ``rollout.urls``) first, then
launches the worker (:mod:`pipeline.methods.exit.training`) under ``accelerate
launch`` as RISE's train stage does, telling it where the servers are; the
worker loads its adapter into them as it trains. The servers stop when the
worker exits, however it exits. Layout, besides the train stage's own
(``train.log``, ``checkpoints/``, ``adapter/``, ``train_summary.json``)::

    iter_K/train/
      buffer.json      the buffer after the newest update (each checkpoint holds its own copy)
      groups.jsonl     one line per GRPO group: step, instance depth, scores, rewards, learnability
      sync/            the adapter last loaded into the servers (removed when training ends)
"""

from __future__ import annotations

import asyncio
import os
import sys
from contextlib import AbstractAsyncContextManager, contextmanager
from pathlib import Path
from typing import Iterator, TypeVar

from pipeline.engine.backends import open_learner
from pipeline.methods.exit.buffer import BUFFER_NAME
from pipeline.run.layout import RunDir
from pipeline.training.launch import STAGE, TrainError, run_training

URLS_ENV = "SELFIMPROVE_ROLLOUT_URLS"
MODEL_ENV = "SELFIMPROVE_ROLLOUT_MODEL"
GROUPS_NAME = "groups.jsonl"
SYNC_NAME = "sync"

T = TypeVar("T")


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


def run_exit_training(run: RunDir, iteration: int, show_progress: bool) -> None:
    """Start the rollout service, train beside it, stop it.

    Training runs in this (the main) thread, so that Ctrl-C and SIGTERM
    reach it as they reach RISE's train stage.
    """
    service = open_learner(run.config, run.stage_dir(iteration, STAGE))
    with asyncio.Runner() as runner, _held(runner, service) as learner:
        env = service_env([endpoint.url for endpoint in learner.endpoints], learner.base_model)
        run_training(run, iteration, show_progress, env)


@contextmanager
def _held(runner: asyncio.Runner, manager: AbstractAsyncContextManager[T]) -> Iterator[T]:
    """Hold an async context manager open around synchronous code, entering and exiting it on ``runner``."""
    value = runner.run(manager.__aenter__())
    try:
        yield value
    except BaseException:
        if not runner.run(manager.__aexit__(*sys.exc_info())):
            raise
    else:
        runner.run(manager.__aexit__(None, None, None))


def exit_outputs(run: RunDir, iteration: int) -> list[Path]:
    """The buffer and the group log, recorded in the manifest beside the adapter."""
    paths = [buffer_path(run, iteration), groups_path(run, iteration)]
    if missing := [str(p) for p in paths if not p.is_file()]:
        raise TrainError(f"ExIt training finished without writing {', '.join(missing)}")
    return paths
