"""ExIt's stages (train -> eval, the registry's entry); its train stage serves the policy while GRPO trains it.

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
from typing import Any, TypeVar

from pipeline.engine.backends import open_learner
from pipeline.eval.stage import run_eval_stage
from pipeline.methods.base import Method, counts_cell
from pipeline.methods.exit.layout import RolloutServers, buffer_path, groups_path, write_servers
from pipeline.run.files import TRAIN_SUMMARY_NAME
from pipeline.run.layout import RunDir
from pipeline.training.launch import STAGE, TrainError, output_files, run_training, train_stage

T = TypeVar("T")


def run_exit_training(run: RunDir, iteration: int, show_progress: bool) -> None:
    """Start the rollout service, train beside it, stop it.

    Training runs in this (the main) thread, so that Ctrl-C and SIGTERM
    reach it as they reach RISE's train stage.
    """
    service = open_learner(run.config, run.stage_dir(iteration, STAGE))
    with asyncio.Runner() as runner, _held(runner, service) as learner:
        write_servers(run, iteration, RolloutServers(tuple(e.url for e in learner.endpoints), learner.base_model))
        run_training(run, iteration, show_progress)


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


def run_train_stage(run: RunDir, iteration: int, show_progress: bool = True) -> Path:
    """Train iteration ``iteration``'s adapter by GRPO beside the rollout service; returns its directory."""

    def train() -> list[Path]:
        run_exit_training(run, iteration, show_progress)
        return output_files(run, iteration) + exit_outputs(run, iteration)

    return train_stage(run, iteration, train)


def _data_row(summary: dict[str, Any]) -> list[str]:
    depth = summary["mean_depth"]
    return [
        str(summary["groups"]),
        "-" if depth is None else f"{depth:.2f}",
        counts_cell(summary["depth_histogram"]),
        str(summary["buffer"]["size"]),
    ]


METHOD = Method(
    stages={"train": run_train_stage, "eval": run_eval_stage},
    # GRPO generates on the rollout servers while it trains, on devices of their own (a config check).
    serving_stages=frozenset({"train", "eval"}),
    title="ExIt (GRPO on self-iteration steps from a learnability buffer)",
    data_summary=(STAGE, TRAIN_SUMMARY_NAME),
    data_columns=("groups", "mean depth", "depth histogram", "buffer size"),
    data_row=_data_row,
)
