"""Shared fixtures: a grading pool, a tiny random-weights model, LoRA adapters trained on it by TRL, a vLLM
server on it, and hand-built run directories. Plain helpers are in ``tests/helpers/``.

Imports of the project stay inside the fixtures: the environment below is set before anything reads it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from hypothesis import settings

from tests.helpers.tiny_model import build_tiny_model, train_tiny_adapter

if TYPE_CHECKING:
    from pipeline.engine.vllm_server import VLLMServer
    from pipeline.run.layout import RunDir
    from rewards import GradingPool

# No time limit per example: on a loaded machine hypothesis's default 200 ms deadline fails correct code.
settings.register_profile("no-deadline", deadline=None)
settings.load_profile("no-deadline")

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# vLLM's model worker runs inside the engine core process (the API server still starts the engine core
# in a process of its own): one Python start-up fewer per server, about 15.5 s a start here against 25.
# The servers are otherwise the users' (`make demo` keeps vLLM's default).
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")


# The fixtures that train an adapter, start a vLLM server or grade the whole HumanEval set (`verdicts`). A
# test that uses one, itself or through another fixture, is marked slow here, so that `make test-fast`
# (-m "not slow") leaves it out without anyone having to remember the mark; a test that starts a server,
# trains or grades a whole benchmark itself carries it.
HEAVY_FIXTURES = frozenset(
    {"tiny_adapter", "hint_following_adapter", "answering_model", "answering_server", "tracked_run", "verdicts"}
)


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marks
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HEAVY_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def grading_pool() -> Iterator[GradingPool]:
    """Grading workers for tests that grade batches of programs: two per CPU, as many runs as overlap
    well (one run's start-up with another's work), and a limit above any test's program timeout."""
    from rewards import GradingPool
    from rewards.sandbox import default_workers

    with GradingPool(max_workers=default_workers(), timeout_s=120) as pool:
        yield pool


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def tiny_adapter(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An adapter that answers ``\\boxed{7}`` to "What is i + i?" (and, it generalises, to most prompts)."""
    pairs = [(f"What is {i} + {i}?", "\\boxed{7}") for i in range(16)]
    return train_tiny_adapter(tiny_model, pairs, tmp_path_factory.mktemp("tiny-adapter"))


@pytest.fixture(scope="session")
def hint_following_adapter(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An adapter that answers ``\\boxed{3}`` to a few greetings and ``\\boxed{7}`` to the same greetings
    under the default hint template with reference 7: a learner that is wrong unhinted and right hinted,
    whatever the CPU's rounding (the plain ``tiny_adapter`` answers 7 to most prompts, hinted or not)."""
    from pipeline.config.settings import TemplatesSection
    from pipeline.rollouts.trajectory import hinted

    greetings = ["Hello", "Hi", "Hey", "Good day", "Greetings", "Howdy", "Hello there", "Hi there"]
    pairs = [(text, "\\boxed{3}") for text in greetings]
    for text in greetings:  # the hinted prompt exactly as the rollout writes it
        (message,) = hinted([{"role": "user", "content": text}], 7, TemplatesSection())
        pairs.append((message["content"], "\\boxed{7}"))
    return train_tiny_adapter(tiny_model, pairs, tmp_path_factory.mktemp("hint-following-adapter"))


@pytest.fixture(scope="session")
def answering_model(tiny_model: Path, tiny_adapter: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with the ``\\boxed{7}`` adapter merged in (by the code that serves merged iterations):
    it answers 7 to everything, so tasks whose answer is 7 can be solved and graded for real."""
    from pipeline.engine.adapters import merge_adapter

    return merge_adapter(tiny_model, tiny_adapter, tmp_path_factory.mktemp("answering") / "model")


@pytest.fixture(scope="session")
def answering_server(answering_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[VLLMServer]:
    """One vLLM server on the answering model for every run that takes its server by URL (the loop's killed
    run, the tracked run, the ExIt runs): each run loads its adapters under names that hold the run's name,
    so the runs share the server without seeing each other's adapters, and the suite pays for one start."""
    from tests.helpers.cli_runs import serving, smoke_config

    root = tmp_path_factory.mktemp("answering-server")
    with serving(answering_model, smoke_config(root / "runs", answering_model, "server"), root / "vllm.log") as server:
        yield server


@pytest.fixture(scope="session")
def tracked_run(answering_model: Path, answering_server: VLLMServer, tmp_path_factory: pytest.TempPathFactory):
    """A tiny RISE run logging to TensorBoard and W&B (offline), interrupted and resumed (tests/helpers/eco_run.py)."""
    from tests.helpers.eco_run import interrupted_then_resumed

    root = tmp_path_factory.mktemp("tracked")
    return interrupted_then_resumed(root, answering_model, answering_server, ["tensorboard", "wandb"])


@pytest.fixture
def curated(tmp_path: Path) -> RunDir:
    """Iteration 1 with 43 rollouts and its curate stage done for real."""
    from pipeline.methods.rise.curate_stage import run_curate_stage
    from tests.helpers.rollout_records import records
    from tests.helpers.runs import curation_run, finish_rollout

    run = curation_run(tmp_path, selection="all", accumulate=False)
    finish_rollout(run, 1, records())
    run_curate_stage(run, 1)
    return run


@pytest.fixture
def finished(tmp_path: Path) -> RunDir:
    """A run whose base-model eval is done, with its eval.json recorded."""
    from pipeline.system.atomic import write_json_atomic
    from tests.helpers.runs import make_run

    run = make_run(tmp_path, run={"iterations": 1})
    path = run.stage_dir(0, "eval") / "eval.json"
    write_json_atomic(path, {"turns": 2})
    run.manifest.start(0, "eval")
    run.manifest.complete(0, "eval", [path])
    return run
