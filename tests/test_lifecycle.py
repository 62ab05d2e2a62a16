"""The stage lifecycle refuses stages outside the run's plan without writing, and one process at a time drives a run.

Both through the real CLI: ``selfimprove curate RUN -i 9`` on a two-iteration
run must leave ``manifest.json`` byte-identical (it used to add
``iter_9/curate``, after which ``status`` named it next and ``resume``
failed forever), and a second process on a run directory whose lock another
process holds must fail at once, naming that process, even after someone
deleted ``run.lock``. ``status`` tells a running stage from one whose
process was killed (SIGKILL, for real) by whether anyone holds the lock.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.run.files import LOCK_NAME, MANIFEST_NAME
from pipeline.run.layout import RunDir
from pipeline.run.lifecycle import StageNotPlannedError, stage_attempt
from pipeline.run.manifest import Manifest, StageState
from tests.helpers.cli_runs import REPO, cli_env, run_cli
from tests.helpers.runs import make_run


def new_run(tmp_path: Path, method: str = "rise") -> RunDir:
    return make_run(tmp_path, run={"name": f"plan_{method}", "report_to": []}, method={"name": method})


@pytest.mark.parametrize(
    ("method", "command"),
    [
        ("rise", ["curate", "-i", "9"]),
        ("rise", ["eval", "-i", "9"]),
        ("exit", ["rollout", "-i", "1"]),
    ],
)
def test_a_stage_outside_the_plan_is_refused_and_the_manifest_stays_byte_identical(
    tmp_path: Path, method: str, command: list[str]
) -> None:
    run = new_run(tmp_path, method)
    before = (run.root / MANIFEST_NAME).read_bytes()
    result = run_cli(command[0], str(run.root), *command[1:])
    assert result.returncode == 1
    stage = f"iter_{command[2]}/{command[0]}"
    assert f"error: {stage} is not in the plan of the run in {run.root}" in " ".join(result.stderr.split())
    assert (run.root / MANIFEST_NAME).read_bytes() == before
    assert not (run.root / f"iter_{command[2]}" / command[0]).exists()


def test_status_reads_the_manifest_without_writing_it(tmp_path: Path) -> None:
    run = new_run(tmp_path)
    before = (run.root / MANIFEST_NAME).read_bytes()
    result = run_cli("status", str(run.root))
    assert result.returncode == 0 and "next: iter_0/eval" in result.stdout
    assert (run.root / MANIFEST_NAME).read_bytes() == before


def test_the_lifecycle_records_failure_and_completion(tmp_path: Path) -> None:
    run = new_run(tmp_path)
    with pytest.raises(ZeroDivisionError):
        with stage_attempt(run.manifest, 1, "rollout") as attempt:
            assert not attempt.done
            _ = 1 / 0
    record = run.manifest.record(1, "rollout")
    assert (record.state.value, record.attempts, record.error) == ("failed", 1, "ZeroDivisionError: division by zero")
    output = run.stage_dir(1, "rollout") / "rollouts.jsonl"
    output.write_text("{}\n")
    with stage_attempt(run.manifest, 1, "rollout") as attempt:
        attempt.outputs = [output]
    with stage_attempt(run.manifest, 1, "rollout") as attempt:
        assert attempt.done
    assert run.manifest.record(1, "rollout").attempts == 2
    with pytest.raises(StageNotPlannedError, match="iter_3/rollout is not in the plan"):
        with stage_attempt(run.manifest, 3, "rollout"):
            pass


HOLD_LOCK = """
import sys
from pipeline.run.layout import RunDir
from pipeline.run.lock import run_lock
with run_lock(sys.argv[1]):
    if sys.argv[2:]:
        RunDir.open(sys.argv[1]).manifest.start(1, sys.argv[2])
    print("held", flush=True)
    sys.stdin.read()
"""


def hold_lock(run: RunDir, *start_stage: str) -> subprocess.Popen:
    """A process holding the run's lock until its stdin closes (``start_stage`` of iteration 1 marked running)."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(run.root), *start_stage],
        cwd=REPO,
        env=cli_env(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline() == "held\n"
    return holder


def test_a_second_process_on_a_locked_run_fails_naming_the_holder(tmp_path: Path) -> None:
    run = new_run(tmp_path)
    before = (run.root / MANIFEST_NAME).read_bytes()
    holder = hold_lock(run)
    try:
        result = run_cli("curate", str(run.root), "-i", "1")
        message = " ".join(result.stderr.split())
        assert result.returncode == 1
        assert f"{run.root} is in use by another selfimprove process (pid {holder.pid})" in message
        assert (run.root / MANIFEST_NAME).read_bytes() == before
    finally:
        holder.communicate("")  # closing its stdin ends it, releasing the lock
    assert holder.returncode == 0
    after = run_cli("curate", str(run.root), "-i", "1")  # the lock is free again: the stage itself answers
    assert "is in use" not in after.stderr and "rollout stage is not done" in " ".join(after.stderr.split())
    assert not (run.root / LOCK_NAME).exists()  # the pid note goes with the process that held the lock


def test_deleting_run_lock_does_not_let_a_second_process_drive_the_run(tmp_path: Path) -> None:
    run = new_run(tmp_path)
    holder = hold_lock(run)
    try:
        assert (run.root / LOCK_NAME).read_text().strip() == str(holder.pid)
        (run.root / LOCK_NAME).unlink()  # it looks stale (it used to stay after a run, naming a dead pid)
        before = (run.root / MANIFEST_NAME).read_bytes()
        result = run_cli("curate", str(run.root), "-i", "1")
        assert result.returncode == 1
        assert f"{run.root} is in use by another selfimprove process" in " ".join(result.stderr.split())
        assert (run.root / MANIFEST_NAME).read_bytes() == before
    finally:
        holder.communicate("")
    assert holder.returncode == 0


def test_a_stage_whose_process_was_killed_shows_as_interrupted(tmp_path: Path) -> None:
    run = new_run(tmp_path)
    holder = hold_lock(run, "rollout")
    try:
        result = run_cli("status", str(run.root))
        assert "iter_1/rollout │ running" in result.stdout and "interrupted" not in result.stdout, result.stdout
        refused = run_cli("curate", str(run.root), "-i", "1")  # status's look at the lock left it to its holder
        assert "is in use by another selfimprove process" in refused.stderr
    finally:
        holder.kill()  # SIGKILL: no handler runs, and the manifest keeps saying "running"
        holder.wait()
    assert Manifest.load(run.root).record(1, "rollout").state is StageState.RUNNING
    result = run_cli("status", str(run.root))
    assert "iter_1/rollout │ interrupted" in result.stdout and "running" not in result.stdout, result.stdout
    assert (
        f"interrupted: iter_1/rollout (no process drives the run); `selfimprove resume {run.root}` continues it"
        in " ".join(result.stdout.split())
    )


def test_a_filesystem_that_cannot_lock_directories_locks_run_lock_instead(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """NFS refuses ``flock`` on a directory (EBADF); this machine's filesystems do not, so that one refusal is
    simulated (the only mock here): the lock falls back to ``run.lock`` and still excludes a second holder."""
    import errno
    import fcntl

    from pipeline.run.lock import RunLockedError, run_held, run_lock

    real_flock = fcntl.flock

    def nfs_flock(fd: int, operation: int) -> None:
        if os.path.isdir(f"/proc/self/fd/{fd}"):
            raise OSError(errno.EBADF, "Bad file descriptor")
        real_flock(fd, operation)

    monkeypatch.setattr(fcntl, "flock", nfs_flock)
    assert not run_held(tmp_path)
    with run_lock(tmp_path):
        assert (tmp_path / "run.lock").read_text() == f"{os.getpid()}\n"
        assert run_held(tmp_path)
        with pytest.raises(RunLockedError, match=f"pid {os.getpid()}"), run_lock(tmp_path):
            pass
    assert not run_held(tmp_path)
