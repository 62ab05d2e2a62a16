"""``selfimprove compare`` on saved eval directories: one table, paired intervals, clear refusals."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.image
from typer.testing import CliRunner

from pipeline.cli import app
from tests.helpers.eval_dirs import finish_eval, hand_evaluated_run, tasks, write_eval_dir

runner = CliRunner()


def test_compare_two_eval_dirs(tmp_path: Path) -> None:
    base = write_eval_dir(tmp_path / "base", tasks(0))
    better = write_eval_dir(tmp_path / "better", tasks(20))
    out = tmp_path / "cmp"
    result = runner.invoke(app, ["compare", str(base), str(better), "--out", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads((out / "compare.json").read_text())
    assert data["labels"] == ["base", "better"] and data["n_tasks"] == 40
    assert data["paths"] == [str(base), str(better)]
    m1 = data["metrics"]["m1@t3"]
    assert m1["values"] == [0.0, 0.5]
    gain = m1["differences_from_first"][0]
    assert gain["estimate"] == 0.5 and gain["low"] > 0.3
    turn1 = data["metrics"]["pass@1 turn 1"]["differences_from_first"][0]
    assert turn1 == {"estimate": 0.0, "low": 0.0, "high": 0.0}
    text = (out / "compare.md").read_text()
    assert "| m1@t3 | 0.0% | 50.0% (+50.0 pp [" in text
    assert "| pass@1 turn 1 | 0.0% | 0.0% (+0.0 pp [+0.0, +0.0], not distinguishable) |" in text
    assert "p3@t1" in text and "m1@t3-m3@t1" in text
    pixels = matplotlib.image.imread(out / "compare.png")
    assert pixels.shape[0] > 100 and pixels.min() < pixels.max()
    assert "m1@t3" in result.output


def test_compare_refuses_other_tasks(tmp_path: Path) -> None:
    first = write_eval_dir(tmp_path / "a", tasks(0, total=40))
    other = write_eval_dir(tmp_path / "b", tasks(0, total=39))
    result = runner.invoke(app, ["compare", str(first), str(other), "--out", str(tmp_path / "cmp")])
    assert result.exit_code == 1
    assert "not of the same tasks (1 task ids appear in only one)" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "cmp").exists()


def test_compare_reads_a_run_directorys_last_eval(tmp_path: Path) -> None:
    run = hand_evaluated_run(tmp_path, iterations=1, samples=3)
    finish_eval(run, 0, 0)
    finish_eval(run, 1, 10)
    base = tmp_path / "base"
    write_eval_dir(base, tasks(0))
    out = tmp_path / "cmp"
    result = runner.invoke(app, ["compare", str(base), str(run.root), "--out", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads((out / "compare.json").read_text())
    assert data["labels"] == ["base", f"{run.root.name}/iter_1"]
    assert data["metrics"]["m1@t3"]["values"] == [0.0, 0.25]
    result = runner.invoke(app, ["compare", str(base), str(run.root), "-i", "0", "--out", str(out)])
    assert json.loads((out / "compare.json").read_text())["metrics"]["m1@t3"]["values"] == [0.0, 0.0]
    result = runner.invoke(app, ["compare", str(base), str(tmp_path / "nothing"), "--out", str(out)])
    assert result.exit_code == 1 and "neither an eval directory" in result.output


def test_two_runs_evals_of_one_name_keep_their_runs_names(tmp_path: Path) -> None:
    """``selfimprove eval RUN --out RUN/eval-heldout`` for two runs: the columns say which run is which."""
    first = hand_evaluated_run(tmp_path, iterations=1, name="control")
    second = hand_evaluated_run(tmp_path, iterations=1, name="signal")
    write_eval_dir(first.root / "eval-heldout", tasks(0))
    write_eval_dir(second.root / "eval-heldout", tasks(10))
    loose = write_eval_dir(tmp_path / "eval-heldout", tasks(0))
    out = tmp_path / "cmp"
    paths = [first.root / "eval-heldout", second.root / "eval-heldout", loose]
    result = runner.invoke(app, ["compare", *map(str, paths), "--out", str(out)])
    assert result.exit_code == 0, result.output
    labels = json.loads((out / "compare.json").read_text())["labels"]
    assert labels == ["control/eval-heldout", "signal/eval-heldout", "eval-heldout"]


def test_a_corrupt_eval_file_is_one_line_naming_it(tmp_path: Path) -> None:
    base = write_eval_dir(tmp_path / "base", tasks(0))
    broken = write_eval_dir(tmp_path / "broken", tasks(0))
    (broken / "eval.json").write_text('{"turns": 3,')
    result = runner.invoke(app, ["compare", str(base), str(broken), "--out", str(tmp_path / "cmp")])
    assert result.exit_code == 1
    assert f"{broken / 'eval.json'}: invalid JSON" in result.output and "Traceback" not in result.output


def test_compare_shows_transition_rates_with_paired_differences(tmp_path: Path) -> None:
    base = write_eval_dir(tmp_path / "base", tasks(0))  # 5, 5, 5: every step a repeat, on both sides
    better = write_eval_dir(tmp_path / "better", tasks(20))  # half revised 5 -> 7 -> 7: fix 60 of 180 wrong steps
    out = tmp_path / "cmp"
    result = runner.invoke(app, ["compare", str(base), str(better), "--out", str(out)])
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "compare.json").read_text())["metrics"]
    fix = metrics["fix: revision"]
    assert fix["values"] == [0.0, 1 / 3]
    assert fix["differences_from_first"][0]["estimate"] == 1 / 3 and fix["differences_from_first"][0]["low"] > 0.15
    assert metrics["repeat: parallel"]["values"] == [1.0, 1.0]  # the first turns are all 5
    assert metrics["flip: revision"]["values"] == [None, 0.0]  # the base is never right: nothing to flip
    text = (out / "compare.md").read_text()
    assert "| fix: revision | 0.0% | 33.3% (+33.3 pp [" in text
    assert "| fix: revision - parallel | +0.0 pp | +33.3 pp (+33.3 pp [" in text
    assert "| no answer: revision | 0.0% | 0.0% (+0.0 pp [+0.0, +0.0], not distinguishable) |" in text
