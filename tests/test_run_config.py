"""A run's config is fixed at its start: an edit of ``config.yaml`` is refused, ``resume --set`` changes it on record.

From the user's side: the CLI on hand-built run directories (stage outputs
written by the real writers, recorded in the real manifest).
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from pipeline.run.files import CONFIG_NAME, MANIFEST_NAME
from pipeline.run.layout import RunDir
from pipeline.run.manifest import Manifest, planned_stages
from pipeline.system.atomic import write_json_atomic
from tests.helpers.cli import assert_one_line_error, cli
from tests.helpers.eval_dirs import finish_eval
from tests.helpers.runs import make_run


def edit_config(run: RunDir, **run_keys: object) -> None:
    """Change keys of the ``run`` section of ``config.yaml`` by hand, as a user would."""
    path = run.root / CONFIG_NAME
    data = yaml.safe_load(path.read_text())
    data["run"].update(run_keys)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def finish_all_but_eval(run: RunDir) -> None:
    """Every stage of the plan done but the evals, each with one small output (no model: nothing can serve)."""
    for iteration, stage in planned_stages(run.config.run.iterations):
        if stage != "eval":
            path = run.stage_dir(iteration, stage) / "out.json"
            write_json_atomic(path, {"stage": stage})
            run.manifest.start(iteration, stage)
            run.manifest.complete(iteration, stage, [path])


def test_a_config_edited_after_the_start_is_refused_naming_the_keys(tmp_path: Path) -> None:
    """Fewer iterations in config.yaml used to drop iteration 2 from the report and the data export without a word."""
    run = make_run(tmp_path, run={"report_to": []})
    for iteration in (0, 1, 2):
        finish_eval(run, iteration, n_right=10 * iteration)
    code, output = cli("report", str(run.root))
    assert code == 0 and "## Iteration 2" in (run.root / "report.md").read_text(), output
    edit_config(run, iterations=1)
    manifest = (run.root / MANIFEST_NAME).read_bytes()
    for command in (
        ["report"],
        ["export", "--data", "--out", str(tmp_path / "data")],
        ["resume"],
        ["curate", "-i", "1"],
        ["eval", "-i", "1"],
        ["train", "-i", "1"],
    ):
        code, output = cli(command[0], str(run.root), *command[1:])
        assert_one_line_error(
            code,
            output,
            f"{run.root / CONFIG_NAME} differs from the config the run started with",
            "run.iterations: 2 -> 1",
            f"selfimprove resume {run.root} --set KEY=VALUE",
        )
    assert (run.root / MANIFEST_NAME).read_bytes() == manifest
    assert not (tmp_path / "data").exists()


def test_resume_set_changes_the_config_for_the_rest_of_the_run_and_the_manifest_records_it(tmp_path: Path) -> None:
    """More iterations in config.yaml used to meet "nothing to resume"; resume --set plans them."""
    run = make_run(tmp_path, run={"report_to": []})
    finish_all_but_eval(run)
    for iteration in (0, 1, 2):
        finish_eval(run, iteration, n_right=iteration)
    for refused, message in (
        (
            ["run.iterations=1"],
            "--set would drop iter_2/rollout, iter_2/curate, iter_2/train, iter_2/eval of the run in",
        ),
        (["run.name=other"], "--set cannot change run.name"),
    ):
        code, output = cli("resume", str(run.root), "--set", *refused)
        assert_one_line_error(code, output, message)
    assert Manifest.load(run.root).overrides == []

    code, output = cli("resume", str(run.root), "--set", "run.iterations=3", "--no-progress")
    # Iteration 3's rollout starts, and stops at once: the hand-built iteration 2 trained no adapter to serve.
    assert code == 1 and "config changed: run.iterations: 2 -> 3" in output and "resuming" in output, output
    assert "at iter_3/rollout" in " ".join(output.split())
    assert yaml.safe_load((run.root / CONFIG_NAME).read_text())["run"]["iterations"] == 3
    manifest = Manifest.load(run.root)
    assert manifest.config["run"]["iterations"] == 3 and list(manifest.stages)[-1] == "iter_3/eval"
    assert [(entry["set"], entry["changes"]) for entry in manifest.overrides] == [
        (["run.iterations=3"], {"run.iterations": "2 -> 3"})
    ]
    assert RunDir.open(run.root).config.run.iterations == 3  # the amended config.yaml is the run's config now


def test_a_run_from_before_the_recorded_config_adopts_its_config_yaml(tmp_path: Path) -> None:
    run = make_run(tmp_path, run={"report_to": []})
    path = run.root / MANIFEST_NAME
    legacy = {key: value for key, value in json.loads(path.read_text()).items() if key not in ("config", "overrides")}
    path.write_text(json.dumps(legacy))
    edit_config(run, seed=7)  # an edit before the manifest recorded any config cannot be told apart: adopted
    reopened = RunDir.open(run.root)
    assert reopened.config.run.seed == 7
    reopened.manifest.start(0, "eval")  # the first write of the manifest records the adopted config
    assert Manifest.load(run.root).config["run"]["seed"] == 7
    edit_config(run, seed=8)
    code, output = cli("resume", str(run.root))
    assert_one_line_error(code, output, "run.seed: 7 -> 8")


def test_a_stage_command_given_another_config_for_an_existing_run_names_the_keys(tmp_path: Path) -> None:
    run = make_run(tmp_path, run={"report_to": []})
    config = tmp_path / "config.yaml"
    config.write_text((run.root / CONFIG_NAME).read_text())
    code, output = cli("rollout", str(config), "-i", "1", "--set", "run.seed=5")
    assert_one_line_error(
        code,
        output,
        f"{run.root} holds a run with another config (run.seed: 0 -> 5)",
        f"`selfimprove resume {run.root} --set KEY=VALUE`",
    )
