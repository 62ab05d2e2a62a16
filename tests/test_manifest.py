"""The run manifest and run directory: states, digests, atomic writes under SIGKILL."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.run.layout import RunDir, RunDirError
from pipeline.run.lock import run_lock
from pipeline.run.manifest import Manifest, StageState, planned_stages
from pipeline.system.atomic import file_digest, read_jsonl
from tests.helpers.runs import make_run


def test_plan_is_base_eval_then_each_iteration() -> None:
    assert planned_stages(2) == [
        (0, "eval"),
        (1, "rollout"),
        (1, "curate"),
        (1, "train"),
        (1, "eval"),
        (2, "rollout"),
        (2, "curate"),
        (2, "train"),
        (2, "eval"),
    ]


def test_stage_lifecycle_is_persisted(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    output = run.stage_dir(0, "eval") / "eval.json"
    output.write_text("{}")

    run.manifest.start(0, "eval")
    assert Manifest.load(run.root).record(0, "eval").state is StageState.RUNNING
    run.manifest.complete(0, "eval", [output])
    run.manifest.start(1, "rollout")
    run.manifest.fail(1, "rollout", "boom")

    loaded = Manifest.load(run.root)
    assert loaded.record(0, "eval").state is StageState.DONE
    assert loaded.record(0, "eval").outputs == {"iter_0/eval/eval.json": file_digest(output)}
    assert loaded.record(1, "rollout").state is StageState.FAILED
    assert loaded.record(1, "rollout").error == "boom"
    assert loaded.record(1, "rollout").attempts == 1
    assert loaded.first_unfinished() == (1, "rollout")


def test_run_dir_refuses_to_overwrite_and_reopens(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    with pytest.raises(RunDirError, match="selfimprove resume"):
        make_run(tmp_path)
    reopened = RunDir.open(run.root)
    assert reopened.config == run.config
    with pytest.raises(RunDirError, match="not a run directory"):
        RunDir.open(tmp_path / "elsewhere")


def test_status_prints_the_manifest(tmp_path: Path) -> None:
    run = make_run(tmp_path, run={"iterations": 1})
    run.manifest.start(0, "eval")
    with run_lock(run.root):  # a process drives the run: its stage is running (not interrupted)
        result = CliRunner().invoke(app, ["status", str(run.root)])
    assert result.exit_code == 0
    assert "iter_0/eval" in result.output and "running" in result.output
    assert "iter_1/train" in result.output and "pending" in result.output
    missing = CliRunner().invoke(app, ["status", str(tmp_path / "nothing")])
    assert missing.exit_code == 1 and "no run manifest" in missing.output


WRITER = """
import sys
from pathlib import Path
from pipeline.run.manifest import Manifest, StageRecord
run_dir = Path(sys.argv[1])
version = 0
while True:
    version += 1
    # Big enough that one write takes many syscalls, so SIGKILL lands mid-write.
    stages = {f"iter_{i}/rollout": StageRecord(error="x" * 2000 + str(version)) for i in range(500)}
    Manifest(run_dir, f"v{version}", stages).save()
"""


def test_manifest_write_killed_midway_leaves_a_readable_manifest(tmp_path: Path) -> None:
    make_run(tmp_path)
    run_dir = tmp_path / "r"
    for delay in (0.3, 0.45, 0.6, 0.8):
        writer = subprocess.Popen([sys.executable, "-c", WRITER, str(run_dir)], cwd=Path(__file__).resolve().parents[1])
        time.sleep(delay)
        writer.send_signal(signal.SIGKILL)
        writer.wait()
        manifest = Manifest.load(run_dir)  # raises if the file is torn
        if manifest.run_name != "r":
            assert all(record.error.endswith(manifest.run_name[1:]) for record in manifest.stages.values())
    leftovers = [p.name for p in run_dir.iterdir() if p.name.endswith(".tmp")]
    # Killed writers may leave their temp file behind, never a torn manifest.
    assert all(name.startswith(".manifest.json.") for name in leftovers)


def test_read_jsonl_drops_a_torn_last_line(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    path.write_text(json.dumps({"a": 1}) + "\n" + '{"a": 2')
    assert read_jsonl(path) == [{"a": 1}]


def test_run_commands_name_a_directory_that_is_not_a_run(tmp_path: Path) -> None:
    for args in (["train", str(tmp_path), "-i", "1"], ["eval", str(tmp_path)], ["resume", str(tmp_path)]):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 1, args
        assert f"{tmp_path} is not a run directory" in result.output
    result = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 1
    assert "manifest" in result.output


def test_every_command_has_help() -> None:
    result = CliRunner().invoke(app, ["--help"])
    for command in ("run", "resume", "status", "rollout", "curate", "train", "eval", "serve", "report"):
        assert command in result.output
        assert CliRunner().invoke(app, [command, "--help"]).exit_code == 0


def test_reading_a_stage_never_adds_it_to_the_manifest(tmp_path: Path) -> None:
    """Asking about iteration 0's train stage (the base model serves iteration 1) must not plan it."""
    run = make_run(tmp_path)
    planned = list(run.manifest.stages)
    assert not run.manifest.is_done(0, "train") and not run.manifest.verified_done(0, "rollout")
    assert run.manifest.record(0, "curate").state is StageState.PENDING and run.manifest.damage(0, "train") == []
    run.manifest.start(1, "rollout")  # any write saves the manifest
    assert list(Manifest.load(run.root).stages) == planned
