"""Graders and task sources from the user's own code: by file path, by module path, by an installed entry point.

The configs name them the way a user would; the rollouts are real (the
``hf`` backend on the tiny random-weights model), graded in the grading
pool's worker processes, so a plugin must load there by itself, and a
misbehaving one (a raise, a hang, NaN, a score out of range, a wrong type)
must cost one answer each, counted, never the stage.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.config.settings import EMBEDDED_MODEL
from pipeline.run.manifest import Manifest, planned_stages
from pipeline.system.atomic import read_jsonl
from tests.helpers.cli_runs import REPO, cli, cli_env
from tests.helpers.runs import arithmetic_tasks

TASKS = arithmetic_tasks()

MISBEHAVING = '''
import math
import time


def grade(response, reference):
    """Misbehaves as the task's reference says."""
    if reference == "raise":
        raise ValueError("no such answer")
    if reference == "hang":
        time.sleep(600)
    if reference == "not a number":
        return math.nan
    if reference == "out of range":
        return 1.5
    if reference == "wrong type":
        return "yes"
    return True
'''

FAILURES = {
    "raise": "grader raised ValueError: no such answer",
    "hang": "timeout",
    "not a number": "grader returned NaN",
    "out of range": "grader returned 1.5, outside [0, 1]",
    "wrong type": "grader returned str, not a bool, a score in [0, 1] or a GradeResult",
}

PLUGIN_PACKAGE = {
    "pyproject.toml": """
        [build-system]
        requires = ["setuptools"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "selfimprove-demo-plugin"
        version = "0.1"

        [project.entry-points."selfimprove.graders"]
        last_word = "demo_plugin.graders:LastWordGrader"

        [project.entry-points."selfimprove.tasks"]
        greetings = "demo_plugin.tasks:greetings"
    """,
    "src/demo_plugin/__init__.py": "",
    "src/demo_plugin/graders.py": '''
        from rewards import GradeResult, Placement


        class LastWordGrader:
            """Right when the response's last word is the reference."""

            name = "last_word"
            binary = True
            placement = Placement.POOL

            def grade(self, response, reference):
                words = response.split()
                last = words[-1] if words else None
                correct = last == reference
                return GradeResult(float(correct), correct, last, "last word: " + str(last))

            def cluster_keys(self, keys):
                return {key: key for key in keys}
    ''',
    "src/demo_plugin/tasks.py": """
        from pipeline.tasks import Task


        def greetings(split, count=4):
            return [{"prompt": f"Say hello number {i} ({split}).", "reference": "hello"} for i in range(count)]


        class Farewells:
            def __init__(self, count=2):
                self.count = count

            def load(self, split):
                return [Task(f"bye-{i}", f"Say goodbye number {i}.", "goodbye") for i in range(self.count)]
    """,
}


def write_config(
    tmp_path: Path, grader: str, tasks: dict, model: str | Path = EMBEDDED_MODEL, options: dict | None = None
) -> Path:
    """A run config of one iteration on the hf backend: one short turn of two samples per task."""
    data = {
        "run": {"name": "plugins", "output_dir": str(tmp_path / "runs"), "iterations": 1},
        "model": {"name_or_path": str(model), "dtype": "float32", "max_model_len": 1024},
        "rollout": {
            "backend": "hf",
            "hf_batch_size": 8,
            "sampling": {"temperature": 1.0, "max_tokens": 8},
        },
        "method": {"name": "rise", "turns": 1, "samples_per_turn": 2},
        "tasks": tasks,
        "grader": {"name": grader, "options": options or {}, "workers": 2, "timeout_s": 2},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def jsonl_tasks(path: Path, answers: list[str]) -> dict:
    """Both splits from one JSONL file of ``answers``, prompts passed through as written."""
    path.write_text("".join(json.dumps({"prompt": f"Say {answer}.", "answer": answer}) + "\n" for answer in answers))
    options = {"train_path": str(path), "eval_path": str(path), "prompt_template": "{question}"}
    return {split: {"source": "jsonl", "options": options} for split in ("train", "eval")}


def run_plugin_cli(site: Path, *args: str) -> subprocess.CompletedProcess:
    """The CLI in a fresh process that has the plugin package on its path, as after `pip install`."""
    env = {**cli_env(), "PYTHONPATH": f"{REPO}:{site}", "COLUMNS": "200"}  # wide enough for a row on one line
    return subprocess.run(cli(*args), cwd=REPO, capture_output=True, text=True, env=env)


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny package that declares a grader and a task source as entry points, pip-installed into a folder."""
    source = tmp_path_factory.mktemp("demo-plugin")
    for name, text in PLUGIN_PACKAGE.items():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        (source / name).write_text(textwrap.dedent(text))
    site = tmp_path_factory.mktemp("site")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-index",
            "--no-build-isolation",
            "--target",
            str(site),
            str(source),
        ],
        check=True,
    )
    return site


@pytest.mark.parametrize(
    ("code", "attr", "options", "message"),
    [
        (
            "raise RuntimeError('licence server unreachable')\n",
            "grade",
            {},
            "(RuntimeError: licence server unreachable)",
        ),
        ("def grade(response, reference):\n    return True\n", "grader", {}, "verifier.py has no 'grader'"),
        (
            "def grade(response):\n    return True\n",
            "grade",
            {},
            "grade(response) cannot be called as grade(response, reference): too many positional arguments",
        ),
        ("THRESHOLD = 0.5\n", "THRESHOLD", {}, "is a float, not a grader class or function"),
        ("class Grade:\n    pass\n", "Grade", {}, "class Grade has no grade(response, reference) method"),
        ("def grade(response, reference):\n    return True\n", "grade", {"tol": 0.1}, "options do not fit"),
    ],
    ids=[
        "import-error",
        "no-such-function",
        "no-reference-argument",
        "not-callable",
        "class-without-grade",
        "unknown-option",
    ],
)
def test_a_grader_that_cannot_grade_stops_the_run_in_one_line_before_anything_starts(
    tmp_path: Path, code: str, attr: str, options: dict, message: str
) -> None:
    (tmp_path / "verifier.py").write_text(code)
    config = write_config(tmp_path, f"{tmp_path}/verifier.py:{attr}", TASKS, options=options)

    result = CliRunner().invoke(app, ["run", str(config), "--no-progress"])

    assert result.exit_code == 1
    assert message in result.output and result.output.strip().count("\n") == 0, result.output
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("no_such_module:grade", "grader.name: cannot import module no_such_module (ModuleNotFoundError"),
        (
            "no_such_grader",
            "unknown grader 'no_such_grader'; known: code, math, numeric, reasoning_gym; or your own: module:attr, path/to/file.py:attr, or an installed plugin",
        ),
    ],
)
def test_a_grader_name_that_names_nothing_says_so_in_one_line(tmp_path: Path, name: str, message: str) -> None:
    result = CliRunner().invoke(app, ["run", str(write_config(tmp_path, name, TASKS))])
    assert result.exit_code == 1
    assert message in result.output and result.output.strip().count("\n") == 0, result.output


def test_a_task_source_function_that_cannot_take_the_split_stops_the_run(tmp_path: Path) -> None:
    (tmp_path / "my_tasks.py").write_text("def tasks():\n    return []\n")
    tasks = {split: {"source": f"{tmp_path}/my_tasks.py:tasks"} for split in ("train", "eval")}
    result = CliRunner().invoke(app, ["run", str(write_config(tmp_path, "numeric", tasks))])
    assert result.exit_code == 1
    assert "tasks.train.source: " in result.output and "tasks() cannot be called as tasks(split)" in result.output


def test_eval_tasks_take_a_task_source_plugin_as_a_config_does(tmp_path: Path) -> None:
    """``selfimprove eval --tasks`` resolves a plugin the way ``tasks.*.source`` does, and refuses one in a line."""
    from pipeline.eval.custom import resolve_eval_tasks
    from pipeline.eval.stage import EvalError
    from pipeline.tasks import load_tasks

    (tmp_path / "my_tasks.py").write_text(
        "def tasks(split):\n    return [{'prompt': f'{split} {i} + 1?', 'reference': i + 1} for i in range(3)]\n"
        "def broken():\n    return []\n"
    )
    section = resolve_eval_tasks(f"{tmp_path}/my_tasks.py:tasks", limit=2)
    assert [task.reference for task in load_tasks(section, "eval")] == [1, 2]
    with pytest.raises(
        EvalError,
        match=r"^--tasks '.*my_tasks.py:broken': not a .jsonl file, and as a task source: "
        r".*broken\(\) cannot be called as broken\(split\)",
    ):
        resolve_eval_tasks(f"{tmp_path}/my_tasks.py:broken")
    with pytest.raises(EvalError, match="file not found"):
        resolve_eval_tasks(str(tmp_path / "missing.jsonl"))


def test_installed_plugins_are_listed_and_a_config_can_name_them(plugin_site: Path, tmp_path: Path) -> None:
    listed = run_plugin_cli(plugin_site, "plugins")
    assert listed.returncode == 0, listed.stderr
    rows = {line.split("│")[2].strip(): line for line in listed.stdout.splitlines() if line.count("│") == 4}
    assert "built-in" in rows["numeric"] and "built-in" in rows["jsonl"]
    assert "entry point of selfimprove-demo-plugin 0.1 (demo_plugin.graders:LastWordGrader)" in rows["last_word"]
    assert "entry point of selfimprove-demo-plugin 0.1" in rows["greetings"]
    # The entry points' names, and a module path to a task source class, in a config: both splits' tasks load.
    tasks = {
        "train": {"source": "greetings"},
        "eval": {"source": "demo_plugin.tasks:Farewells", "options": {"count": 3}},
    }
    checked = run_plugin_cli(plugin_site, "run", str(write_config(tmp_path, "last_word", tasks)), "--dry-run")
    assert checked.returncode == 0, checked.stderr
    assert "config OK: 4 train and 3 eval tasks" in checked.stdout


@pytest.mark.slow
def test_an_entry_point_grader_grades_real_rollouts_in_the_grading_workers(
    plugin_site: Path, tiny_model: Path, tmp_path: Path
) -> None:
    tasks = {split: {"source": "greetings"} for split in ("train", "eval")}
    config = write_config(tmp_path, "last_word", tasks, model=tiny_model)
    result = run_plugin_cli(plugin_site, "rollout", str(config), "--no-progress")
    assert result.returncode == 0, result.stdout + result.stderr
    records = read_jsonl(tmp_path / "runs" / "plugins" / "iter_1" / "rollout" / "rollouts.jsonl")
    assert len(records) == 4 and {record["reference"] for record in records} == {"hello"}
    for candidate in (c for record in records for turn in record["turns"] for c in turn["candidates"]):
        words = candidate["response"].split()
        assert candidate["grade"]["error"] is None
        assert candidate["grade"]["feedback"] == f"last word: {words[-1] if words else None}"


@pytest.mark.slow
def test_every_way_a_grader_function_misbehaves_costs_one_answer_counted_by_the_stage(
    tiny_model: Path, tmp_path: Path
) -> None:
    (tmp_path / "verifier.py").write_text(MISBEHAVING)
    tasks = jsonl_tasks(tmp_path / "tasks.jsonl", [*FAILURES, "ok"])
    config = write_config(tmp_path, f"{tmp_path}/verifier.py:grade", tasks, model=tiny_model)

    rollout = CliRunner().invoke(app, ["rollout", str(config), "--no-progress"])
    assert rollout.exit_code == 0, rollout.output
    run_dir = tmp_path / "runs" / "plugins"
    assert Manifest.load(run_dir).is_done(1, "rollout")
    records = {record["reference"]: record for record in read_jsonl(run_dir / "iter_1" / "rollout" / "rollouts.jsonl")}
    for reference, error in FAILURES.items():
        (turn,) = records[reference]["turns"]
        assert [c["grade"]["error"] for c in turn["candidates"]] == [error, error], reference
        assert turn["grade"]["score"] == 0 and not turn["grade"]["correct"]
    (turn,) = records["ok"]["turns"]
    assert turn["grade"]["error"] is None and turn["grade"]["correct"]
    assert turn["grade"]["parsed"] == (turn["response"].strip() or None)  # a bare verdict: the response is the answer

    curate = CliRunner().invoke(app, ["curate", str(run_dir)])
    assert curate.exit_code == 0, curate.output
    summary = json.loads((run_dir / "iter_1" / "curate" / "summary.json").read_text())
    answered = [reference for reference in FAILURES if records[reference]["turns"][0]["response"].strip()]
    assert summary["skipped"]["grading_error"] == len(answered) > 0  # an empty response is skipped as empty first


@pytest.mark.slow
def test_the_guides_own_task_runs_end_to_end(tiny_model: Path, tmp_path: Path) -> None:
    """docs/your-own-task.md's example as the guide runs it, from the repository's root, on the tiny model."""
    overrides = {
        "run.output_dir": str(tmp_path),
        "model.name_or_path": str(tiny_model),
        "model.dtype": "float32",
        "model.max_model_len": 1024,
        "rollout.backend": "hf",
        "method.turns": 2,
        "method.samples_per_turn": 1,
        "rollout.sampling.max_tokens": 8,
        "evaluation.turns": 2,
        "evaluation.sampling.max_tokens": 8,
        "tasks.train.limit": 4,
        "tasks.eval.limit": 3,
        "method.max_seq_length": 256,
    }
    sets = [arg for key, value in overrides.items() for arg in ("--set", f"{key}={value}")]
    result = subprocess.run(
        cli("run", "configs/own_task/config.yaml", *sets, "--no-progress"),
        cwd=REPO,
        capture_output=True,
        text=True,
        env=cli_env(),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    run_dir = tmp_path / "own_task"
    manifest = Manifest.load(run_dir)
    assert [key for key in manifest.stages] == [f"iter_{k}/{stage}" for k, stage in planned_stages(1)]
    assert all(manifest.is_done(k, stage) for k, stage in planned_stages(1))
    for stage in ("iter_0/eval", "iter_1/rollout", "iter_1/eval"):
        for record in read_jsonl(run_dir / stage / "rollouts.jsonl"):
            for turn in record["turns"]:  # graded by the verifier: its bare verdict makes the response the answer
                assert turn["grade"]["error"] is None
                assert turn["grade"]["parsed"] == (turn["response"].strip() or None)
    for iteration in (0, 1):
        assert json.loads((run_dir / f"iter_{iteration}" / "eval" / "eval.json").read_text())["grading_errors"] == 0
