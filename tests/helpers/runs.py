"""Configs on the arithmetic task source and fresh run directories built from them.

The arithmetic source generates its tasks in process: a config on it parses
without a file, a download or a model, so it is what a test uses wherever
the tasks do not matter.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.config.settings import parse_config
from pipeline.rollouts.records import TrajectoryRecord
from pipeline.run.files import ROLLOUTS_NAME
from pipeline.run.layout import RunDir
from pipeline.system.atomic import write_jsonl_atomic

ROLLOUTS = "iter_1/rollout/rollouts.jsonl"
TAU = 0.4


def arithmetic_tasks(**options: Any) -> dict[str, Any]:
    """A ``tasks`` section: train and eval from the arithmetic source, with ``options`` (none: its defaults).

    Each call builds new dicts, so that a test may change its copy, and a YAML
    dump of it holds no anchors.
    """

    def split() -> dict[str, Any]:
        return {"source": "arithmetic", "options": dict(options)} if options else {"source": "arithmetic"}

    return {"train": split(), "eval": split()}


def make_run(root: Path, **sections: dict[str, Any]) -> RunDir:
    """A fresh run directory (config.yaml, a manifest with every stage pending) under ``root``.

    The config is run "r" of 2 iterations on arithmetic tasks; ``sections``
    replace whole sections, except ``run``, whose keys go over those defaults.
    """
    run = {"name": "r", "output_dir": str(root), "iterations": 2, **sections.pop("run", {})}
    return RunDir.create(parse_config({"run": run, "tasks": arithmetic_tasks(), **sections}))


def curation_run(root: Path, **method: Any) -> RunDir:
    """A RISE run with weights exp(r / TAU) and ``method``'s settings, for the curate stage."""
    return make_run(root, method={"name": "rise", "tau": TAU, **method})


def finish_rollout(run: RunDir, iteration: int, records: list[TrajectoryRecord]) -> None:
    """Write ``records`` as the iteration's rollout output and record the stage done."""
    path = run.stage_dir(iteration, "rollout") / ROLLOUTS_NAME
    write_jsonl_atomic(path, [record.to_dict() for record in records])
    run.manifest.start(iteration, "rollout")
    run.manifest.complete(iteration, "rollout", [path])
