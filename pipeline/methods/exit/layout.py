"""Where ExIt's train stage keeps its files, and how it tells the worker where the rollout servers are.

Both the pipeline side (:mod:`pipeline.methods.exit.stages`) and the worker
(:mod:`pipeline.methods.exit.training`) read these, so they import nothing
heavy.

The servers reach the worker as ``iter_K/train/servers.json``, which the
stage writes before each launch, rather than as options on the worker's
command line: that command (``pipeline.training.worker RUN_DIR --iteration
K``) is every method's, and the other machines of a multi-machine run
launch it too (:func:`pipeline.training.launch.join_training`) without
knowing the servers, which only the main process talks to. Like the
buffer and the checkpoints, the file is one more input the worker finds in
its stage directory, and it still says which servers the last attempt used.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from pipeline.run.files import BUFFER_NAME, GROUPS_NAME, SERVERS_NAME, SYNC_NAME
from pipeline.run.layout import RunDir
from pipeline.system.atomic import read_json, write_json_atomic
from pipeline.training.launch import STAGE, TrainError


def buffer_path(run: RunDir, iteration: int) -> Path:
    return run.stage_dir(iteration, STAGE) / BUFFER_NAME


def groups_path(run: RunDir, iteration: int) -> Path:
    return run.stage_dir(iteration, STAGE) / GROUPS_NAME


def sync_dir(run: RunDir, iteration: int) -> Path:
    return run.stage_dir(iteration, STAGE) / SYNC_NAME


@dataclass(frozen=True)
class RolloutServers:
    """The rollout servers' URLs and the name they serve the base model under."""

    urls: tuple[str, ...]
    model: str


def servers_path(run: RunDir, iteration: int) -> Path:
    return run.stage_dir(iteration, STAGE) / SERVERS_NAME


def write_servers(run: RunDir, iteration: int, servers: RolloutServers) -> None:
    """Tell the worker about to be launched where this attempt's servers are."""
    write_json_atomic(servers_path(run, iteration), asdict(servers))


def read_servers(run: RunDir, iteration: int) -> RolloutServers:
    """The servers the train stage started for this attempt, as it wrote them before launching the worker."""
    path = servers_path(run, iteration)
    if not path.is_file():
        raise TrainError(f"the ExIt worker needs {path}, which the train stage writes: run it through the stage")
    data = read_json(path)
    return RolloutServers(tuple(data["urls"]), data["model"])
