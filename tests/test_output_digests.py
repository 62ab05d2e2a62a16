"""Every file a stage publishes carries a digest, and every command that reads a run checks it first.

The runs are built the cheap way: stage files written by hand (a small real
safetensors file stands in for a model) or by the stages' own writers, and
recorded by the stages' own recording functions in the real manifest;
nothing is mocked. Each damaged input is refused in one line that names the
file and says that ``selfimprove resume`` redoes the stage.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from pipeline.run.layout import RunDir
from pipeline.system.atomic import write_jsonl_atomic
from pipeline.training.launch import output_files
from tests.helpers.cli import assert_one_line_error, cli
from tests.helpers.damage import edit_a_line, tear_last_line
from tests.helpers.eval_dirs import tasks, write_eval_dir
from tests.helpers.runs import ROLLOUTS, make_run

CHAT_TEMPLATE = "{% for message in messages %}{{ message['content'] }}{% endfor %}"


def merged_run(root: Path, name: str = "r", **model: str) -> RunDir:
    """A one-iteration run with ``rollout.serve_merged``: its train stage publishes a merged model too."""
    return make_run(root, run={"name": name, "iterations": 1}, rollout={"serve_merged": True}, model=model)


def write_model_dir(path: Path, config_name: str, config: dict, weights_name: str) -> None:
    """A saved model's files as transformers and PEFT leave them: config, weights, tokenizer config, chat template."""
    path.mkdir(parents=True)
    (path / config_name).write_text(json.dumps(config))
    save_file({"weight": np.arange(64 * 64, dtype=np.float32).reshape(64, 64)}, str(path / weights_name))
    (path / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 2048}))
    (path / "chat_template.jinja").write_text(CHAT_TEMPLATE)


def finish_train(run: RunDir) -> None:
    """Iteration 1's train stage as training leaves it, recorded by the train stage's own ``output_files``."""
    train = run.stage_dir(1, "train")
    write_model_dir(
        train / "adapter", "adapter_config.json", {"peft_type": "LORA", "r": 8}, "adapter_model.safetensors"
    )
    write_model_dir(train / "merged", "config.json", {"model_type": "llama"}, "model.safetensors")
    (train / "train_summary.json").write_text(json.dumps({"examples": 4, "steps": 2}))
    run.manifest.start(1, "train")
    run.manifest.complete(1, "train", output_files(run, 1))


@pytest.fixture
def trained(tmp_path: Path) -> RunDir:
    run = merged_run(tmp_path / "runs")
    finish_train(run)
    return run


EVAL_FILES = ("rollouts.jsonl", "eval.json", "curves.json", "per_task.jsonl", "task_metrics.jsonl")


def finish_eval(run: RunDir, n_right: int) -> None:
    """The base model's eval stage as the eval stage writes it (no parallel samples: n >= T), recorded done."""
    out = run.stage_dir(0, "eval")
    out.rmdir()
    write_eval_dir(out, tasks(n_right))
    write_jsonl_atomic(out / "rollouts.jsonl", [])  # the trajectories; neither the report nor compare reads them
    run.manifest.start(0, "eval")
    run.manifest.complete(0, "eval", [out / name for name in EVAL_FILES])


@pytest.fixture
def evaluated(tmp_path: Path) -> RunDir:
    run = merged_run(tmp_path / "runs")
    finish_eval(run, 0)
    return run


# --- exports ----------------------------------------------------------------------


def test_a_truncated_merged_model_is_not_exported(trained: RunDir, tmp_path: Path) -> None:
    code, output = cli("export", str(trained.root), "-i", "1", "--out", str(tmp_path / "intact"))
    assert code == 0 and (tmp_path / "intact" / "model.safetensors").is_file(), output
    weights = trained.root / "iter_1" / "train" / "merged" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])

    code, output = cli("export", str(trained.root), "-i", "1", "--out", str(tmp_path / "torn"))
    assert_one_line_error(code, output, f"{weights} does not match the digest", f"selfimprove resume {trained.root}")
    assert not (tmp_path / "torn").exists()  # no folder, no model card: nothing to push


@pytest.mark.parametrize(
    ("name", "options"),
    [("merged/chat_template.jinja", []), ("adapter/chat_template.jinja", ["--adapter"])],
    ids=["merged model", "adapter"],
)
def test_an_edited_chat_template_is_damage(trained: RunDir, tmp_path: Path, name: str, options: list[str]) -> None:
    template = trained.root / "iter_1" / "train" / name
    template.write_text(CHAT_TEMPLATE.replace("content", "role"))

    code, output = cli("status", str(trained.root))
    assert code == 0 and "damaged: iter_1/train;" in output, output
    code, output = cli("export", str(trained.root), "-i", "1", *options, "--out", str(tmp_path / "out"))
    assert_one_line_error(code, output, f"{template} does not match the digest", "selfimprove resume")
    assert not (tmp_path / "out").exists()


def test_an_export_whose_model_directories_are_gone_is_one_line(tmp_path: Path) -> None:
    base = tmp_path / "base"  # a base model that cannot load, so that nothing may get as far as loading it
    base.mkdir()
    (base / "config.json").write_text(json.dumps({"model_type": "llama"}))
    run = merged_run(tmp_path / "runs", name_or_path=str(base))
    finish_train(run)
    shutil.rmtree(run.root / "iter_1" / "train" / "adapter")
    shutil.rmtree(run.root / "iter_1" / "train" / "merged")

    code, output = cli("export", str(run.root), "-i", "1", "--out", str(tmp_path / "out"))
    adapter_config = run.root / "iter_1" / "train" / "adapter" / "adapter_config.json"
    assert_one_line_error(code, output, f"{adapter_config} is missing", f"selfimprove resume {run.root}")
    assert not (tmp_path / "out").exists()


def duplicate_a_line(path: Path) -> None:
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:5] + [lines[4]] + lines[5:]))


@pytest.mark.parametrize(
    "damage", [tear_last_line, edit_a_line, duplicate_a_line], ids=["torn row", "edited row", "duplicated row"]
)
def test_a_data_export_refuses_damaged_records(curated: RunDir, tmp_path: Path, damage: Callable[[Path], None]) -> None:
    damage(curated.root / ROLLOUTS)
    code, output = cli("export", str(curated.root), "--data", "--out", str(tmp_path / "data"))
    assert_one_line_error(code, output, f"{curated.root / ROLLOUTS} does not match the digest", "selfimprove resume")
    assert not (tmp_path / "data").exists()


# --- report, compare, status --------------------------------------------------------


@pytest.mark.parametrize(
    ("record", "commands"),
    [
        ({"state": "done", "outputs": ["iter_0/eval/eval.json"]}, ("status", "report", "resume")),
        ({"state": "done", "finished_at": 20260101}, ("status", "report")),
        ({"state": "failed", "error": 1}, ("status", "report")),
        ({"state": "done", "outputs": {"../../elsewhere.json": "0" * 64}}, ("status", "report")),
    ],
    ids=["outputs a list", "finish time a number", "error a number", "output outside the run"],
)
def test_a_manifest_of_the_wrong_shape_is_one_line(finished: RunDir, record: dict, commands: tuple[str, ...]) -> None:
    """Valid JSON, wrong structure. (Resume is only asked where it failed before it could start a stage.)"""
    manifest = finished.root / "manifest.json"
    manifest.write_text(
        json.dumps({"run": "r", "stages": {"iter_0/eval": record, "iter_1/rollout": {"state": "pending"}}})
    )
    for command in commands:
        code, output = cli(command, str(finished.root))
        assert_one_line_error(code, output, str(manifest), "not a run manifest")


@pytest.mark.parametrize(
    "text",
    ["", "run: [unclosed\n", "- a list\n", "run: {name: r}\n"],
    ids=["empty", "not YAML", "not a mapping", "no iterations"],
)
def test_report_on_a_broken_config_yaml_is_one_line(evaluated: RunDir, text: str) -> None:
    config = evaluated.root / "config.yaml"
    config.write_text(text)
    code, output = cli("report", str(evaluated.root))
    assert_one_line_error(code, output, str(config))


def test_compare_out_onto_an_existing_file_is_one_line(tmp_path: Path) -> None:
    first, second = (write_eval_dir(tmp_path / name, tasks(n)) for name, n in (("a", 0), ("b", 20)))
    out = tmp_path / "notes.txt"
    out.write_text("mine")
    code, output = cli("compare", str(first), str(second), "--out", str(out))
    assert_one_line_error(code, output, f"--out {out} is a file")
    assert out.read_text() == "mine"


def test_compare_refuses_a_damaged_eval_of_a_run(tmp_path: Path) -> None:
    runs = [merged_run(tmp_path / "runs", name) for name in ("a", "b")]
    for run, n_right in zip(runs, (0, 20)):
        finish_eval(run, n_right)
    rows = runs[1].root / "iter_0" / "eval" / "task_metrics.jsonl"
    text = rows.read_text()
    rows.write_text(text.replace('"m1@t3": 1.0', '"m1@t3": 0.0', 1))
    assert rows.read_text() != text

    for second in (runs[1].root, runs[1].root / "iter_0" / "eval"):  # by run, and by its eval directory
        code, output = cli("compare", str(runs[0].root), str(second), "--out", str(tmp_path / "cmp"))
        assert_one_line_error(code, output, f"{rows} does not match the digest", f"selfimprove resume {runs[1].root}")
    assert not (tmp_path / "cmp").exists()
