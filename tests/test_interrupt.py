"""One Ctrl-C ends a command, whatever it is doing, stops what it started and leaves a run that resumes.

Everything is real: ``selfimprove`` in a subprocess on the tiny model, its own
vLLM CPU servers, and Ctrl-C as a terminal sends it (SIGINT to the command's
process group; the servers run in sessions of their own, which the terminal
does not reach). A server that never finishes starting is a server frozen with
SIGSTOP as soon as it exists: only the interrupt can then end the wait for it.
The safety bound on each wait only keeps a broken build from hanging the
suite; no test asserts how long anything took.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import psutil
import pytest

from pipeline.run.files import TIMINGS_NAME
from pipeline.run.manifest import Manifest, StageState
from pipeline.system.atomic import read_jsonl
from tests.helpers.cli_runs import REPO, cli, cli_env, default_sigint, run_cli, smoke_config, write_config

pytestmark = pytest.mark.slow

SAFETY_S = 300.0
SERVER_MODULE = "vllm.entrypoints.openai.api_server"
T = TypeVar("T")


class Commands:
    """The commands a test starts; whatever is left of them and their servers is killed when the test ends."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.started: list[subprocess.Popen] = []
        self.seen: list[psutil.Process] = []

    def start(self, *args: str) -> subprocess.Popen:
        """``selfimprove ARGS`` in a session of its own, as a terminal runs a command, SIGINT at its default."""
        log = self.tmp_path / f"command-{len(self.started)}.log"
        with open(log, "wb") as out:
            process = subprocess.Popen(
                cli(*args),
                cwd=REPO,
                env=cli_env(),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=default_sigint,
            )
        self.started.append(process)
        return process

    def ctrl_c(self, process: subprocess.Popen) -> tuple[int, str]:
        """Press Ctrl-C once; the command's exit code and output once it has ended."""
        self.seen += descendants(process)
        os.killpg(process.pid, signal.SIGINT)
        try:
            code = process.wait(timeout=SAFETY_S)
        except subprocess.TimeoutExpired:
            pytest.fail("one Ctrl-C did not end the command")
        return code, output(process, self)

    def survivors(self) -> list[str]:
        """What is left of every process the commands started (their servers' process groups included)."""
        deadline = time.monotonic() + SAFETY_S  # killed processes take a moment to be reaped
        while (left := living(self.seen)) and time.monotonic() < deadline:
            time.sleep(0.2)
        return [f"{p.pid} {' '.join(p.cmdline())[:120]}" for p in left]

    def kill_all(self) -> None:
        for process in self.started:
            self.seen += descendants(process)
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for process in living(self.seen):
            for sig in (signal.SIGKILL, signal.SIGCONT):
                try:
                    os.killpg(process.pid, sig)
                except (ProcessLookupError, PermissionError):
                    pass
        for process in self.started:
            process.wait()


def output(process: subprocess.Popen, commands: Commands) -> str:
    return (commands.tmp_path / f"command-{commands.started.index(process)}.log").read_text(errors="replace")


def descendants(process: subprocess.Popen) -> list[psutil.Process]:
    """The command's child processes, children's children included, and every process of their groups."""
    try:
        children = psutil.Process(process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    groups = {_group(child) for child in living(children)} - {process.pid, None}
    return children + [p for p in psutil.process_iter() if _group(p) in groups and p not in children]


def _group(process: psutil.Process) -> int | None:
    try:
        return os.getpgid(process.pid)
    except ProcessLookupError:
        return None


def living(processes: list[psutil.Process]) -> list[psutil.Process]:
    """The processes still running (a zombie has ended); ``is_running`` also tells a reused pid apart."""
    alive = []
    for process in processes:
        try:
            if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                alive.append(process)
        except psutil.NoSuchProcess:
            continue
    return alive


def wait_for(found: Callable[[], T | None], process: subprocess.Popen, what: str) -> T:
    """Poll ``found`` until it returns something; the command must not end meanwhile."""
    deadline = time.monotonic() + SAFETY_S
    while (value := found()) is None:
        assert process.poll() is None, f"the command ended before {what}"
        assert time.monotonic() < deadline, f"no {what} within the safety bound"
        time.sleep(0.1)
    return value


def server_of(process: subprocess.Popen) -> Callable[[], psutil.Process | None]:
    """The command's vLLM server process, once it exists."""

    def find() -> psutil.Process | None:
        for child in descendants(process):
            try:
                if SERVER_MODULE in child.cmdline():
                    return child
            except psutil.NoSuchProcess:
                continue
        return None

    return find


def freeze(server: psutil.Process) -> None:
    """A server that never finishes starting: its process group stopped as soon as it exists."""
    os.killpg(server.pid, signal.SIGSTOP)


def server_up(stage_dir: Path, process: subprocess.Popen) -> Callable[[], bool | None]:
    """True once ``process`` has recorded the stage's ``server_start`` phase without an error: its server
    answers, and generation begins."""

    def recorded() -> bool | None:
        timings = stage_dir / TIMINGS_NAME
        lines = read_jsonl(timings) if timings.exists() else []
        return any(line["phase"] == "server_start" and line["pid"] == process.pid for line in lines) or None

    return recorded


def config_with_many_tasks(tmp_path: Path, model: Path, name: str) -> Path:
    """The smoke run on 200 eval tasks of 64 tokens a turn, so that generation lasts well past the server's
    start, and a server start bounded only far beyond the safety bound."""
    tasks = tmp_path / "many_tasks.jsonl"
    tasks.write_text("".join(json.dumps({"prompt": f"What is {i} + 1?", "answer": i + 1}) + "\n" for i in range(200)))
    data = smoke_config(tmp_path / "runs", model, name)
    data["rollout"]["server"]["startup_timeout_s"] = 3600
    data["tasks"]["eval"] = {"source": "jsonl", "options": {"eval_path": str(tasks)}}
    data["evaluation"]["sampling"]["max_tokens"] = 64
    return write_config(tmp_path, data)


@pytest.fixture
def commands(tmp_path: Path) -> Iterator[Commands]:
    started = Commands(tmp_path)
    try:
        yield started
    finally:
        started.kill_all()


def assert_interrupted(manifest_root: Path, stage: str, attempts: int) -> None:
    record = Manifest.load(manifest_root).stages[stage]
    assert record.state is StageState.FAILED and record.attempts == attempts, record
    assert record.error.startswith("KeyboardInterrupt")


def test_ctrl_c_while_the_server_starts_and_while_it_generates_then_resume(
    tiny_model: Path, tmp_path: Path, commands: Commands
) -> None:
    config = config_with_many_tasks(tmp_path, tiny_model, "interrupted")
    root = tmp_path / "runs" / "interrupted"

    # `run`: Ctrl-C while its (kept) server starts, a server that would never answer.
    run = commands.start("run", str(config), "--no-progress")
    freeze(wait_for(server_of(run), run, "a vLLM server"))
    code, said = commands.ctrl_c(run)
    assert code == 130, said
    assert f"interrupted; continue with `selfimprove resume {root}`" in said
    assert commands.survivors() == []
    assert_interrupted(root, "iter_0/eval", attempts=1)

    # `resume` starts the stage again; Ctrl-C once its server is up, while it generates.
    resume = commands.start("resume", str(root), "--no-progress")
    wait_for(server_up(root / "iter_0" / "eval", resume), resume, "a server up")
    code, said = commands.ctrl_c(resume)
    assert code == 130, said
    assert commands.survivors() == []
    assert_interrupted(root, "iter_0/eval", attempts=2)
    status = run_cli("status", str(root))
    assert status.returncode == 0 and "next: iter_0/eval" in status.stdout, status.stdout + status.stderr


def test_ctrl_c_while_a_single_stage_starts_its_server(tiny_model: Path, tmp_path: Path, commands: Commands) -> None:
    """A one-stage command (its servers its own, no run loop) ends the same way, saying how to continue."""
    config = config_with_many_tasks(tmp_path, tiny_model, "one-stage")
    root = tmp_path / "runs" / "one-stage"

    rollout = commands.start("rollout", str(config), "--iteration", "1", "--no-progress")
    freeze(wait_for(server_of(rollout), rollout, "a vLLM server"))
    code, said = commands.ctrl_c(rollout)
    assert code == 130, said
    assert f"interrupted; run it again, or continue the run with `selfimprove resume {root}`" in said
    assert commands.survivors() == []
    assert_interrupted(root, "iter_1/rollout", attempts=1)
