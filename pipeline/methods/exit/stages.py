"""ExIt's train stage (:mod:`pipeline.methods.exit.method`): it serves the policy while GRPO trains it.

GRPO generates while it trains, so the stage starts the rollout service
(vLLM on the base model, or the servers of ``rollout.urls``) first, then
launches the worker (:mod:`pipeline.methods.exit.training`) under ``accelerate
launch`` as RISE's train stage does, telling it where the servers are
(``servers.json``, :mod:`pipeline.methods.exit.layout`); the worker loads its
adapter into them as it trains. The servers stop when the
worker exits, however it exits. Layout, besides the train stage's own
(``train.log``, ``checkpoints/``, ``adapter/``, ``train_summary.json``)::

    iter_K/train/
      buffer.json      the buffer after the newest update (each checkpoint holds its own copy)
      groups.jsonl     one line per GRPO group: step, instance depth, scores, rewards, learnability, the
                       buffer's score quantiles, the error of a failed group
      servers.json     the rollout servers' URLs and served model name, written before each launch
      sync/            the adapter last loaded into the servers (removed when training ends)
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from contextlib import AbstractAsyncContextManager, contextmanager
from pathlib import Path
from typing import TypeVar

from pipeline.engine.backends import open_learner
from pipeline.engine.service_client import ServiceClient
from pipeline.engine.stage_context import StageContext
from pipeline.methods.exit.layout import RolloutServers, buffer_path, groups_path, write_servers
from pipeline.run.layout import RunDir
from pipeline.training.launch import STAGE, TrainError, output_files, run_training, train_stage

T = TypeVar("T")


def run_exit_training(context: StageContext) -> None:
    """Start the rollout service (or take the run loop's servers), train beside it, stop it.

    Training runs in this (the main) thread, so that Ctrl-C and SIGTERM
    reach it as they reach RISE's train stage.
    """
    run, iteration = context.run, context.iteration
    service = open_learner(run.config, run.stage_dir(iteration, STAGE), context.servers)
    with asyncio.Runner() as runner, _held(runner, service) as learner:
        assert isinstance(learner, ServiceClient), "ExIt's config requires rollout.backend vllm"
        write_servers(run, iteration, RolloutServers(tuple(e.url for e in learner.endpoints), learner.base_model))
        run_training(run, iteration, context.progress)


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


def run_train_stage(context: StageContext) -> Path:
    """Train iteration K's adapter by GRPO beside the rollout service; returns its directory."""
    run, iteration = context.run, context.iteration

    def train() -> list[Path]:
        run_exit_training(context)
        return output_files(run, iteration) + exit_outputs(run, iteration)

    return train_stage(run, iteration, train)
