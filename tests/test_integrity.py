"""A damaged run is never used as if it were whole; bad input fails early with one line naming the file.

Runs are built the cheap way (stage outputs written by the real writers and
recorded in the real manifest, the curate stage run for real); nothing is
mocked. The slow tests (a second machine joining, adapters on a vLLM
server) live where their machinery already is.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.config.settings import ConfigError
from pipeline.methods.rise.curate_stage import run_curate_stage
from pipeline.run.files import SUPERSEDED_DIR
from pipeline.run.layout import RunDir
from pipeline.run.manifest import DamagedOutputError, Manifest, StageState
from pipeline.runner.loop import redo_damaged
from pipeline.system.atomic import CorruptFileError, make_temp_dir, read_jsonl, write_json_atomic, write_text_atomic
from tests.helpers.cli import assert_one_line_error, cli
from tests.helpers.damage import edit_a_line, tear_last_line
from tests.helpers.rollout_records import make_record, records
from tests.helpers.runs import ROLLOUTS, arithmetic_tasks, curation_run, finish_rollout

TASKS = arithmetic_tasks()


# --- damaged outputs ------------------------------------------------------------


@pytest.mark.parametrize("damage", [tear_last_line, edit_a_line], ids=["torn last line", "edited line"])
def test_a_damaged_rollout_file_is_shown_refused_and_redone(curated: RunDir, damage: Callable[[Path], None]) -> None:
    damage(curated.root / ROLLOUTS)

    code, output = cli("status", str(curated.root))
    assert code == 0
    assert "damaged: iter_1/rollout;" in output and "all stages done" not in output
    with pytest.raises(DamagedOutputError, match=r"iter_1/rollout/rollouts.jsonl does not match the digest"):
        RunDir.open(curated.root).manifest.verified_done(1, "rollout")

    redone = redo_damaged(RunDir.open(curated.root))
    assert list(redone) == ["iter_1/rollout", "iter_1/curate"]
    assert "rollouts.jsonl does not match" in redone["iter_1/rollout"]
    assert redone["iter_1/curate"] == "built on iter_1/rollout, which is redone"
    manifest = Manifest.load(curated.root)
    assert manifest.record(1, "rollout").state is StageState.PENDING and manifest.record(1, "rollout").outputs == {}
    assert manifest.record(1, "curate").state is StageState.PENDING
    assert not (curated.root / "iter_1" / "rollout").exists()  # a redo starts clean, not from the damaged records
    assert (curated.root / SUPERSEDED_DIR / ROLLOUTS).is_file()
    assert (curated.root / SUPERSEDED_DIR / "iter_1" / "curate" / "train.jsonl").is_file()
    assert redo_damaged(RunDir.open(curated.root)) == {}  # nothing is damaged any more


def test_curate_refuses_a_torn_rollout_file_naming_it(tmp_path: Path) -> None:
    """The issue's case: curate on a torn file silently dropped the torn record (42 examples' worth instead of 43)."""
    run = curation_run(tmp_path, selection="all", accumulate=False)
    finish_rollout(run, 1, records())
    tear_last_line(run.root / ROLLOUTS)

    code, output = cli("curate", str(run.root), "--iteration", "1")
    assert_one_line_error(code, output, str(run.root / ROLLOUTS), "selfimprove resume")
    record = Manifest.load(run.root).record(1, "curate")
    assert record.state is StageState.FAILED and "DamagedOutputError" in record.error
    assert not (run.root / "iter_1" / "curate" / "train.jsonl").exists()


def test_a_deleted_curate_directory_is_redone_by_resume_with_the_same_examples(curated: RunDir) -> None:
    before = (curated.root / "iter_1" / "curate" / "train.jsonl").read_bytes()
    assert len(read_jsonl(curated.root / "iter_1" / "curate" / "train.jsonl")) == 2 * 43
    shutil.rmtree(curated.root / "iter_1" / "curate")

    code, output = cli("status", str(curated.root))
    assert code == 0 and "damaged: iter_1/curate;" in output

    redone = redo_damaged(RunDir.open(curated.root))
    assert list(redone) == ["iter_1/curate"]
    assert "iter_1/curate/train.jsonl is missing" in redone["iter_1/curate"]
    run = RunDir.open(curated.root)
    run_curate_stage(run, 1)
    assert (curated.root / "iter_1" / "curate" / "train.jsonl").read_bytes() == before
    assert run.manifest.verified_done(1, "curate") and run.manifest.record(1, "curate").attempts == 2


def test_resume_redoes_a_damaged_stage_before_going_on(tmp_path: Path) -> None:
    """Through the CLI: the redone curate stage runs for real; the train stage after it stops at once on an
    empty training set (no rollout turn is kept by 'success'), so no training has to run."""
    run = curation_run(tmp_path, selection="success", accumulate=False)
    write_json_atomic(run.stage_dir(0, "eval") / "eval.json", {})
    run.manifest.start(0, "eval")
    run.manifest.complete(0, "eval", [run.root / "iter_0" / "eval" / "eval.json"])
    finish_rollout(run, 1, [make_record(f"t{i}", [0.0, 0.0]) for i in range(3)])
    run_curate_stage(run, 1)
    summary = run.root / "iter_1" / "curate" / "summary.json"
    summary.write_text(summary.read_text().replace('"examples": 0', '"examples": 7'))

    code, output = cli("resume", str(run.root), "--no-progress")
    assert "redoing iter_1/curate" in output and "summary.json does not match the digest" in output
    assert code == 1 and "training set" in output and "is empty" in output and "Traceback" not in output, output
    manifest = Manifest.load(run.root)
    assert manifest.record(1, "curate").state is StageState.DONE and manifest.record(1, "curate").attempts == 2
    assert json.loads(summary.read_text())["examples"] == 0
    assert manifest.record(1, "train").state is StageState.FAILED


def test_a_deleted_adapter_is_never_served(tmp_path: Path) -> None:
    from pipeline.rollouts.service import iteration_model

    run = curation_run(tmp_path)
    adapter = run.stage_dir(1, "train") / "adapter"
    adapter.mkdir()
    files = [adapter / "adapter_config.json", adapter / "adapter_model.safetensors"]
    for path in files:
        path.write_text("{}")
    run.manifest.start(1, "train")
    run.manifest.complete(1, "train", files)
    shutil.rmtree(adapter)
    with pytest.raises(DamagedOutputError, match=r"iter_1/train/adapter/adapter_config.json is missing"):
        iteration_model(run, 1)
    redone = redo_damaged(run)
    assert list(redone) == ["iter_1/train"]  # iteration 2's rollout was never started: nothing else to redo


def test_jsonl_lines_that_do_not_parse_name_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    path.write_text('{"a": 1}\n{"a": \n{"a": 3}\n')
    with pytest.raises(CorruptFileError, match=rf"{path}:2: invalid JSON"):
        read_jsonl(path)
    path.write_text('{"a": 1}\n[1]\n')
    with pytest.raises(CorruptFileError, match=rf"{path}:2: expected a JSON object"):
        read_jsonl(path)
    path.write_text('{"a": 1}\n{"a": 2')
    with pytest.raises(CorruptFileError, match=rf"{path}:2: invalid JSON .*cut short"):
        read_jsonl(path, whole=True)


# --- early, one-line errors -------------------------------------------------------


def write_config(tmp_path: Path, **sections: dict) -> Path:
    data = {"run": {"name": "r", "output_dir": str(tmp_path / "runs")}, "tasks": TASKS, **sections}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def jsonl_tasks(path: Path) -> dict:
    return {"train": {"source": "jsonl", "options": {"train_path": str(path)}}, "eval": TASKS["eval"]}


@pytest.mark.parametrize(
    ("contents", "message"),
    [
        (b'{"prompt": "1 + 1?", "answer": 2}\n{"prompt": "2 + 2?", "answer": \n', "tasks.jsonl:2: invalid JSON"),
        (b'{"prompt": "1 + 1?", "answer": 2}\n{"prompt": 5, "answer": 4}\n', "tasks.jsonl:2: field 'prompt'"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe binary", "tasks.jsonl: not UTF-8 text"),
        (
            b'{"prompt": "1 + 1?", "answer": 2}\n{"prompt": "2 + 2?", "answer": NaN}\n',
            "tasks.jsonl:2: field 'answer' is 'nan', not a finite number",
        ),
        (
            b'{"prompt": "1 + 1?", "answer": 2}\n{"prompt": "2 + 2?", "answer": ""}\n',
            "tasks.jsonl:2: field 'answer' is an empty answer",
        ),
    ],
    ids=["malformed row", "bad type", "binary file", "NaN answer", "empty answer"],
)
def test_dry_run_reads_the_task_rows(tmp_path: Path, contents: bytes, message: str) -> None:
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_bytes(contents)
    config = write_config(tmp_path, tasks=jsonl_tasks(tasks))
    for args in (["--dry-run"], []):
        code, output = cli("run", str(config), *args, "--no-progress")
        assert_one_line_error(code, output, "tasks.train", message)
    assert not (tmp_path / "runs").exists()  # failed before any run directory (or server) existed


def test_dry_run_counts_the_tasks_it_read(tmp_path: Path) -> None:
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text("".join(json.dumps({"prompt": f"{i} + 1?", "answer": i + 1}) + "\n" for i in range(3)))
    code, output = cli("run", str(write_config(tmp_path, tasks=jsonl_tasks(tasks))), "--dry-run")
    assert code == 0, output
    assert "config OK" in output and "3 train and" in output


@pytest.mark.parametrize(
    ("sections", "message"),
    [
        ({"run": {"name": ".."}}, "run.name: must name a directory inside run.output_dir, not '..'"),
        ({"evaluation": {"turns": 1}}, "evaluation.turns: Input should be greater than or equal to 2"),
        # The user's case: every request of the rollout got HTTP 400, and the run went on.
        (
            {"rollout": {"sampling": {"max_tokens": 2048}}},
            "rollout.sampling.max_tokens (2048) must be below model.max_model_len (2048)",
        ),
        (
            {"evaluation": {"sampling": {"max_tokens": 4096}}},
            "evaluation.sampling.max_tokens (4096) must be below model.max_model_len (2048)",
        ),
        # Turn 5 of a trajectory shows its 4 earlier attempts uncut: up to 5 x 512 tokens with its own answer.
        (
            {"method": {"name": "rise", "turns": 5}, "rollout": {"sampling": {"max_tokens": 512}}},
            "rollout.sampling.max_tokens (512) x 5 (the answer and the 4 earlier attempt(s) the prompt of a rollout turn "
            "shows) = 2560 must be below model.max_model_len (2048)",
        ),
        (
            {"method": {"name": "exit"}, "evaluation": {"turns": 9}},
            "evaluation.sampling.max_tokens (256) x 9 (the answer and the 8 earlier attempt(s)",
        ),
        ({"grader": {"workers": 100_000}}, "grader.workers: 100000 is more than this machine can use"),
        ({"grader": {"timeout_s": float("inf")}}, "grader.timeout_s: Input should be a finite number"),
        ({"training": {"learning_rate": float("inf")}}, "training.learning_rate: Input should be a finite number"),
        (
            {"method": {"name": "rise", "unparsed_reward": float("nan")}},
            "method.unparsed_reward: Input should be a finite number",
        ),
        ({"model": {"name_or_path": "/no/such/model"}}, "model.name_or_path: /no/such/model: no such model directory"),
        (
            {"method": {"name": "rise", "turns": True, "samples_per_turn": 4}},
            "method.turns: expects a number, got the boolean true",
        ),
        ({"evaluation": {"samples": True}}, "evaluation.samples: expects a number, got the boolean true"),
        ({"run": {"seed": -1}}, "run.seed: Input should be greater than or equal to 0"),
        (
            {"rollout": {"server": {"port": 65535, "replicas": 2}}},
            "rollout.server.port 65535 + replicas (2) - 1 is above 65535",
        ),
        (
            {"method": {"name": "exit", "buffer_capacity": 16, "min_buffer": 32}},
            "method.min_buffer (32) must be at most method.buffer_capacity (16)",
        ),
    ],
    ids=[
        "run.name ..",
        "evaluation.turns 1",
        "RISE max_tokens = max_model_len",
        "eval max_tokens > max_model_len",
        "RISE history over the context",
        "ExIt eval history over the context",
        "100,000 grading workers",
        "infinite timeout",
        "infinite learning rate",
        "NaN reward",
        "missing model path",
        "turns: true",
        "samples: true",
        "negative seed",
        "replica port above 65535",
        "ExIt buffer never full",
    ],
)
def test_dry_run_refuses_settings_that_would_fail_later(tmp_path: Path, sections: dict, message: str) -> None:
    data = {"run": {"output_dir": str(tmp_path / "runs")}, "tasks": TASKS}
    for key, value in sections.items():
        data[key] = {**data.get(key, {}), **value}
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(data))
    code, output = cli("run", str(config), "--dry-run")
    assert_one_line_error(code, output, str(config), message)
    assert not (tmp_path / "runs").exists()


def test_set_overrides_are_as_strict_as_the_file(tmp_path: Path) -> None:
    """--set values are read as YAML: an int still sets a count, a boolean is refused as in the file."""
    code, output = cli("run", str(write_config(tmp_path)), "--set", "method.turns=4", "--dry-run")
    assert code == 0 and "turns: 4" in output, output
    code, output = cli("run", str(write_config(tmp_path)), "--set", "method.turns=true", "--dry-run")
    assert_one_line_error(code, output, "method.turns: expects a number, got the boolean true")
    code, output = cli("run", str(write_config(tmp_path)), "--set", "rollout.turns=3", "--dry-run")
    assert_one_line_error(code, output, "rollout.turns moved to method.turns")


@pytest.mark.parametrize(
    ("contents", "expected"),
    [
        ("distributed_type: MULTI_GPU\nnum_processes: [2]\n", "num_processes: Input should be a valid integer"),
        ("distributed_type: FSDP\nfsdp_config: 3\n", "fsdp_config: Input should be a valid dictionary"),
        ("distributed_type: MULTI_GPU\nnum_machines: 0\n", "num_machines: Input should be greater than or equal to 1"),
        ("distributed_type: MULTI_GPU\nuse_cpu: 'no'\n", "use_cpu: Input should be a valid boolean"),
        ("distributed_type: NO\n", "distributed_type: is false: YAML reads a bare NO as false, write 'NO'"),
    ],
    ids=["list for a count", "number for a section", "no machines", "string for a flag", "bare NO"],
)
def test_an_accelerate_config_value_of_the_wrong_type_is_one_line(tmp_path: Path, contents: str, expected: str) -> None:
    accelerate = tmp_path / "accelerate.yaml"
    accelerate.write_text(contents)
    code, output = cli("run", str(write_config(tmp_path, training={"accelerate_config": str(accelerate)})), "--dry-run")
    assert_one_line_error(code, output, f"training.accelerate_config {accelerate}", expected)


@pytest.mark.parametrize("kind", ["directory", "not UTF-8"])
def test_an_unreadable_accelerate_config_is_named(tmp_path: Path, kind: str) -> None:
    accelerate = tmp_path / "accelerate"
    if kind == "directory":
        accelerate.mkdir()
        expected = "is a directory, not an accelerate config file"
    else:
        accelerate.write_bytes(b"distributed_type: \xff\xfe\n")
        expected = "is not UTF-8 text"
    code, output = cli("run", str(write_config(tmp_path, training={"accelerate_config": str(accelerate)})), "--dry-run")
    assert code == 1 and "training.accelerate_config" in output and expected in output, output
    assert "Traceback" not in output


def test_an_unclosed_set_value_is_one_line(tmp_path: Path) -> None:
    code, output = cli("run", str(write_config(tmp_path)), "--set", "rollout.sampling.stop=[a", "--dry-run")
    assert_one_line_error(code, output, "--set 'rollout.sampling.stop=[a'", "is not valid YAML")


def test_a_corrupt_manifest_is_one_line(finished: RunDir) -> None:
    manifest = finished.root / "manifest.json"
    manifest.write_text(manifest.read_text()[:50])
    for command in ("status", "resume", "report"):
        code, output = cli(command, str(finished.root))
        assert_one_line_error(code, output, str(manifest), "invalid JSON")
    manifest.write_text(json.dumps({"run": "r", "stages": {"iter_0/eval": {"state": "finished"}}}))
    code, output = cli("status", str(finished.root))
    assert_one_line_error(code, output, str(manifest), "not a run manifest")


def test_a_corrupt_config_yaml_is_one_line(finished: RunDir) -> None:
    config = finished.root / "config.yaml"
    config.write_text(config.read_text() + "\nrun: [unclosed\n")
    code, output = cli("resume", str(finished.root))
    assert_one_line_error(code, output, str(config), "is not valid YAML")
    config.write_bytes(b"\xff\xfe not text")
    code, output = cli("curate", str(finished.root))
    assert_one_line_error(code, output, str(config), "is not UTF-8 text")


def test_a_corrupt_eval_json_is_one_line(finished: RunDir) -> None:
    path = finished.root / "iter_0" / "eval" / "eval.json"
    path.write_text('{"turns": ')
    code, output = cli("report", str(finished.root))
    assert_one_line_error(code, output, str(path), "does not match the digest")


def test_debug_shows_the_traceback(finished: RunDir) -> None:
    (finished.root / "manifest.json").write_text("{")
    result = CliRunner().invoke(app, ["--debug", "status", str(finished.root)])
    assert result.exit_code == 1 and isinstance(result.exception, CorruptFileError)
    result = CliRunner().invoke(app, ["--debug", "run", str(finished.root / "missing.yaml")])
    assert isinstance(result.exception, ConfigError)


# --- file modes -------------------------------------------------------------------


@pytest.mark.parametrize(("umask", "file_mode", "dir_mode"), [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)])
def test_atomic_writes_honour_the_umask(tmp_path: Path, umask: int, file_mode: int, dir_mode: int) -> None:
    previous = os.umask(umask)
    try:
        write_text_atomic(tmp_path / "f.txt", "x")
        staged = make_temp_dir(tmp_path, ".staged-")
    finally:
        os.umask(previous)
    assert (tmp_path / "f.txt").stat().st_mode & 0o777 == file_mode
    assert staged.stat().st_mode & 0o777 == dir_mode
