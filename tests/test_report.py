"""The run report on a run directory with hand-written eval.json / curves.json and a real manifest."""

from __future__ import annotations

import io
import json
from pathlib import Path

import matplotlib.image
import pytest
from rich.console import Console
from rich.table import Table

from pipeline.eval.report import ReportError, collect_evals, report_table, training_depths, write_report
from pipeline.run.files import ACCURACY_PLOT, CURVES_PLOT, REPORT_NAME, TRANSITIONS_PLOT
from pipeline.run.layout import RunDir
from pipeline.run.manifest import DamagedOutputError
from tests.helpers.eval_dirs import TURNS, finish_eval, hand_evaluated_run
from tests.helpers.eval_records import make_record, parallel_record

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def summary(pass1: list[float], m1: float, p1: float, mT: float | None, deltas: tuple[float, float, float]) -> dict:
    """An eval.json in the schema of pipeline.eval.evaluation.summarize_eval, T = 3, n = 2."""
    return {
        "n_tasks": 40,
        "turns": TURNS,
        "samples": 2,
        "per_turn": [
            {"turn": t, "pass@1": p, "pass@k": {"1": p, "2": min(1.0, p + 0.1)}} for t, p in enumerate(pass1, start=1)
        ],
        f"m1@t{TURNS}": m1,
        f"p1@t{TURNS}": p1,
        f"m{TURNS}@t1": mT,
        "delta_t1_tT": deltas[0],
        "delta_i_to_c": deltas[1],
        "delta_c_to_i": deltas[2],
    }


def curves(sequential: list[float], parallel: list[float | None]) -> dict:
    return {"k": list(range(1, TURNS + 1)), "sequential": sequential, "parallel": parallel}


BASE = summary([0.235, 0.25, 0.26], m1=0.25, p1=0.4, mT=0.275, deltas=(0.025, 0.05, 0.025))
BASE_CURVES = curves([0.235, 0.24, 0.25], [0.235, 0.26, 0.275])
ITER1 = summary([0.3, 0.34, 0.375], m1=0.35, p1=0.525, mT=0.3, deltas=(0.075, 0.1, 0.025))
ITER1_CURVES = curves([0.3, 0.33, 0.35], [0.3, 0.29, 0.3])


def write_eval(run: RunDir, iteration: int, eval_json: dict, curves_json: dict, done: bool = True) -> None:
    """Write an iteration's eval files; mark the stage done in the manifest, or leave it running."""
    out = run.stage_dir(iteration, "eval")
    paths = [out / "eval.json", out / "curves.json"]
    for path, data in zip(paths, (eval_json, curves_json)):
        path.write_text(json.dumps(data))
    run.manifest.start(iteration, "eval")
    if done:
        run.manifest.complete(iteration, "eval", paths)


def table_rows(table: Table) -> list[list[str]]:
    """The cells of each printed line of a rich table (header included, borders dropped)."""
    console = Console(width=200, record=True, file=io.StringIO())
    console.print(table)
    lines = console.export_text().splitlines()
    split = [line.replace("┃", "│").split("│") for line in lines]
    return [cells for parts in split if len(cells := [part.strip() for part in parts if part.strip()]) > 1]


@pytest.fixture
def run(tmp_path: Path) -> RunDir:
    """Base and iteration 1 evaluated; iteration 2's eval written but still running."""
    run = hand_evaluated_run(tmp_path)
    write_eval(run, 0, BASE, BASE_CURVES)
    write_eval(run, 1, ITER1, ITER1_CURVES)
    write_eval(run, 2, summary([0.9, 0.9, 0.9], 0.9, 0.9, 0.9, (0, 0, 0)), BASE_CURVES, done=False)
    return run


def test_report_numbers_match_the_eval_files(run: RunDir) -> None:
    text = write_report(run.root).read_text(encoding="utf-8")
    assert text.startswith("# Run report: demo\n")
    assert "- model: `org/some-model`" in text
    assert "- method: rise (mode self_distill, selection all, tau 0.4," in text
    assert "- evaluation: 40 tasks, 3 turns, 2 samples per task" in text
    base, iteration_1 = text.split("## Iteration 0 (base model)")[1].split("## Iteration 1")
    for row in ("| pass@1 turn 1 | 23.5% |", "| pass@1 turn 3 | 26.0% |", "| m1@t3 | 25.0% |", "| p1@t3 | 40.0% |"):
        assert row in base
    for row in ("| m3@t1 | 27.5% |", "| delta_t1_tT | +2.5 pp |", "| delta_c_to_i | +2.5 pp |", "| tasks | 40 |"):
        assert row in base
    for row in ("| pass@1 turn 2 | 34.0% |", "| m1@t3 | 35.0% |", "| p1@t3 | 52.5% |", "| m3@t1 | 30.0% |"):
        assert row in iteration_1
    assert "| delta_i_to_c | +10.0 pp |" in iteration_1
    assert "sequential beats parallel at equal samples: no (m1@t3 25.0% < m3@t1 27.5%)" in base
    assert "Iteration 1 vs base: m1@t3 35.0%, +10.0 pp from 25.0%" in iteration_1
    assert "sequential beats parallel at equal samples: yes (m1@t3 35.0% >= m3@t1 30.0%)" in iteration_1


def test_iterations_whose_eval_is_not_done_are_left_out(run: RunDir) -> None:
    assert [ev.iteration for ev in collect_evals(run.root)] == [0, 1]
    text = write_report(run.root).read_text(encoding="utf-8")
    assert "## Iteration 2" not in text
    assert "90.0%" not in text
    assert "- evaluated: iterations 0, 1 of 0..2 (not evaluated yet: 2)" in text


def test_plots_are_valid_pngs_linked_relatively(run: RunDir) -> None:
    text = write_report(run.root).read_text(encoding="utf-8")
    for name in (ACCURACY_PLOT, CURVES_PLOT):
        path = run.root / name
        assert path.read_bytes().startswith(PNG_MAGIC)
        pixels = matplotlib.image.imread(path)
        assert pixels.ndim == 3 and pixels.shape[0] > 100 and pixels.shape[1] > 100
        assert pixels.min() < pixels.max()  # something was drawn
        assert f"]({name})" in text


def test_unmeasured_parallel_baseline_reads_n_a(tmp_path: Path) -> None:
    run = hand_evaluated_run(tmp_path, iterations=1)
    write_eval(run, 0, {**BASE, f"m{TURNS}@t1": None}, curves([0.235, 0.24, 0.25], [0.235, None, None]))
    text = write_report(run.root).read_text(encoding="utf-8")
    assert "| m3@t1 | n/a |" in text
    assert "sequential beats parallel at equal samples: n/a (m3@t1 was not measured)" in text
    assert (run.root / CURVES_PLOT).read_bytes().startswith(PNG_MAGIC)


def test_rerun_replaces_every_file_and_leaves_no_temp_files(run: RunDir) -> None:
    write_report(run.root)
    first = {
        name: (run.root / name).read_bytes() for name in (REPORT_NAME, ACCURACY_PLOT, CURVES_PLOT, TRANSITIONS_PLOT)
    }
    run.manifest.complete(2, "eval", [run.root / "iter_2" / "eval" / "eval.json"])
    write_report(run.root)
    second = {name: (run.root / name).read_bytes() for name in first}
    assert all(first[name] != second[name] for name in first)
    assert "## Iteration 2" in second[REPORT_NAME].decode()
    top_level = sorted(path.name for path in run.root.iterdir() if path.is_file())
    assert top_level == sorted(
        [ACCURACY_PLOT, "config.yaml", "manifest.json", REPORT_NAME, CURVES_PLOT, TRANSITIONS_PLOT]
    )


def test_a_run_with_no_finished_eval_has_nothing_to_report(tmp_path: Path) -> None:
    run = hand_evaluated_run(tmp_path)
    write_eval(run, 0, BASE, BASE_CURVES, done=False)
    assert collect_evals(run.root) == []
    with pytest.raises(ReportError, match="no eval stage is done yet"):
        write_report(run.root)
    assert not (run.root / REPORT_NAME).exists()


def test_a_done_eval_without_its_files_is_an_error(run: RunDir) -> None:
    (run.root / "iter_1" / "eval" / "curves.json").unlink()
    with pytest.raises(DamagedOutputError, match=r"iter_1/eval/curves.json is missing.*selfimprove resume"):
        collect_evals(run.root)


def test_evals_with_different_turns_cannot_share_a_report(tmp_path: Path) -> None:
    run = hand_evaluated_run(tmp_path)
    write_eval(run, 0, BASE, BASE_CURVES)
    write_eval(run, 1, {**ITER1, "samples": 4}, ITER1_CURVES)
    with pytest.raises(ReportError, match="differ in turns or samples"):
        collect_evals(run.root)


def test_report_table_has_a_column_per_iteration(run: RunDir) -> None:
    rows = {cells[0]: cells[1:] for cells in table_rows(report_table(collect_evals(run.root)))}
    assert rows["metric"] == ["base", "iteration 1"]
    assert rows["pass@1 turn 1"] == ["23.5%", "30.0%"]
    assert rows["m1@t3"] == ["25.0%", "35.0%"]
    assert rows["delta_t1_tT"] == ["+2.5 pp", "+7.5 pp"]
    assert rows["tasks"] == ["40", "40"]
    assert rows["m1@t3 vs base"] == ["-", "+10.0 pp"]
    assert rows["m1@t3 >= m3@t1"] == ["no", "yes"]


def test_exit_runs_mark_each_iterations_mean_training_depth(run: RunDir) -> None:
    """ExIt's train summaries carry mean_depth; RISE's do not, and then nothing is marked."""
    evals = collect_evals(run.root)
    assert training_depths(run.root, evals) == {}
    summary = run.stage_dir(1, "train") / "train_summary.json"
    summary.write_text(json.dumps({"mean_depth": 1.25, "steps": 8}))
    assert training_depths(run.root, evals) == {}  # the train stage is not done: its summary is not read
    run.manifest.start(1, "train")
    run.manifest.complete(1, "train", [summary])
    assert training_depths(run.root, evals) == {1: 1.25}
    write_report(run.root)
    assert (run.root / "accuracy_by_turn.png").read_bytes()[:8] == PNG_MAGIC


def test_report_shows_the_oracle_baseline_intervals_and_incomplete_count(tmp_path: Path) -> None:
    """Evals written by the eval stage's own writer: p3@t1, the gaps with intervals, changes vs base with intervals."""
    run = hand_evaluated_run(tmp_path, iterations=1)
    finish_eval(run, 0, 0)
    finish_eval(run, 1, 10)
    text = write_report(run.root).read_text(encoding="utf-8")
    iteration_1 = text.split("## Iteration 1")[1]
    assert "| p3@t1 | 0.0% |" in iteration_1
    assert "| m1@t3-m3@t1 | +25.0 pp [" in iteration_1
    assert "| p1@t3-p3@t1 | +25.0 pp [" in iteration_1
    assert "| pass@1 turn 2 | 25.0% [" in iteration_1
    assert "| incomplete trajectories | 0 (+0 parallel) |" in iteration_1
    assert "Iteration 1 vs base: m1@t3 25.0%, +25.0 pp [" in iteration_1
    rows = {cells[0]: cells[1:] for cells in table_rows(report_table(collect_evals(run.root)))}
    assert rows["m1@t3 vs base"][1].startswith("+25.0 pp [")
    assert rows["p3@t1"] == ["0.0%", "0.0%"]


# --- Issue 33: transition rates and their plot ---


def finish_eval_with_records(run: RunDir, iteration: int, keep_transitions: bool) -> None:
    """An eval stage as it writes its files (rollouts, parallel samples, figures), marked done.

    ``keep_transitions`` False drops ``transitions`` from eval.json: an eval written before they existed.
    """
    from pipeline.eval.stage import write_eval_outputs
    from rewards import get_grader

    answers = {
        "a": ["5", "5", "7"],
        "b": ["7", None, "5"],
        "c": ["5", "6", "6"],
    }  # repeat, fix | flip, other | other, other
    records = [make_record(task, sample, found) for task, found in answers.items() for sample in range(2)]
    parallel = [
        parallel_record("a", ["5", "5", "7"]),
        parallel_record("b", ["7", "7", "5"]),
        parallel_record("c", ["5", "7", "7"]),
    ]  # repeat, fix | keep, flip | fix, keep
    out = run.stage_dir(iteration, "eval")
    (out / "parallel").mkdir()
    (out / "rollouts.jsonl").write_text("".join(json.dumps(r.to_dict()) + "\n" for r in records))
    (out / "parallel" / "rollouts.jsonl").write_text("".join(json.dumps(r.to_dict()) + "\n" for r in parallel))
    write_eval_outputs(out, records, parallel, get_grader("numeric"), TURNS, 2, seed=0, history_window=None)
    if not keep_transitions:
        summary = json.loads((out / "eval.json").read_text())
        del summary["transitions"]
        (out / "eval.json").write_text(json.dumps(summary))
    run.manifest.start(iteration, "eval")
    run.manifest.complete(iteration, "eval", [out / "eval.json", out / "rollouts.jsonl"])


def test_report_shows_transition_rates_also_for_an_eval_that_predates_them(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from pipeline.cli import app

    run = hand_evaluated_run(tmp_path, iterations=1)
    finish_eval_with_records(run, 0, keep_transitions=False)
    finish_eval_with_records(run, 1, keep_transitions=True)
    result = CliRunner().invoke(app, ["report", str(run.root)])
    assert result.exit_code == 0, result.output
    text = (run.root / REPORT_NAME).read_text(encoding="utf-8")
    # revision, per sample: after a wrong answer repeat, fix, other, other, other; after a right one a flip.
    # parallel: after a wrong answer repeat, fix, fix; after a right one keep, flip, keep.
    fix_row = next(line for line in text.splitlines() if line.startswith("| fix, all turns |"))
    assert fix_row.count("20.0% / 66.7% (-46.7 pp [") == 2  # recounted from the records (base) = as written (iter 1)
    assert "| repeat, t1->t2 | 50.0% / 50.0% (+0.0 pp [" in text
    assert "| flip, all turns | 100.0% / 33.3% (+66.7 pp [" in text
    assert "| no answer, all turns | 0.0% / 0.0% (+0.0 pp [+0.0, +0.0], not distinguishable) |" in text
    assert "20.0% / 66.7%" in result.output  # the table printed at the end
    path = run.root / TRANSITIONS_PLOT
    assert f"]({TRANSITIONS_PLOT})" in text and path.read_bytes().startswith(PNG_MAGIC)
    pixels = matplotlib.image.imread(path)
    assert pixels.shape[0] > 100 and pixels.min() < pixels.max()


def test_an_eval_without_records_reads_n_a_for_transitions(run: RunDir) -> None:
    text = write_report(run.root).read_text(encoding="utf-8")
    assert "| fix, all turns | n/a | n/a |" in text
    assert (run.root / TRANSITIONS_PLOT).read_bytes().startswith(PNG_MAGIC)
