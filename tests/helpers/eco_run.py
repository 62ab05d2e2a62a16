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

from pipeline.config.settings import parse_config
from pipeline.engine.vllm_server import VLLMServer
from pipeline.run.layout import RunDir
from pipeline.runner.loop import run_loop
from tests.helpers.cli_runs import SMOKE_TURNS, smoke_config

TURNS = SMOKE_TURNS
ITERATIONS = 2


def tracked_config(root: Path, model: Path, url: str, report_to: list[str]) -> dict:
    """The loop tests' smoke run against a running server, with trackers."""
    config = smoke_config(root / "runs", model, "tracked", [url])
    config["run"]["report_to"] = report_to
    return config


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
