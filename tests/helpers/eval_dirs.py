"""Eval directories and eval stages written by hand from real grades, for the report, compare and status."""

from __future__ import annotations

from pathlib import Path

from pipeline.eval.stage import write_eval_outputs
from pipeline.run.layout import RunDir
from rewards import get_grader
from tests.helpers.eval_records import graded_record
from tests.helpers.runs import arithmetic_tasks, make_run

TURNS = 3


def hand_evaluated_run(root: Path, iterations: int = 2, samples: int = 2, name: str = "demo") -> RunDir:
    """A run of ``TURNS``-turn evals of ``samples`` samples whose eval stages the test writes: its model is
    a Hub name that nothing loads."""
    return make_run(
        root,
        run={"name": name, "iterations": iterations},
        model={"name_or_path": "org/some-model"},
        tasks=arithmetic_tasks(seed=1),
        evaluation={"turns": TURNS, "samples": samples, "sampling": {"temperature": 0.7}},
    )


def write_eval_dir(out: Path, answers_by_task: dict[str, list[str]]) -> Path:
    """An eval directory as the eval stage writes it, from real numeric grades (reference 7, n=3 >= T)."""
    records = [
        graded_record(task, sample, [f"\\boxed{{{a}}}" for a in answers], "numeric", "7")
        for task, answers in answers_by_task.items()
        for sample in range(3)
    ]
    out.mkdir(parents=True)
    write_eval_outputs(out, records, None, get_grader("numeric"), TURNS, 3, seed=0, history_window=None)
    return out


def finish_eval(run: RunDir, iteration: int, n_right: int) -> None:
    """Write iteration ``iteration``'s eval stage of ``run`` (``n_right`` of 40 tasks revised right) and mark it done."""
    out = run.stage_dir(iteration, "eval")
    out.rmdir()
    write_eval_dir(out, tasks(n_right))
    run.manifest.start(iteration, "eval")
    run.manifest.complete(iteration, "eval", [out / "eval.json"])


def tasks(n_right: int, total: int = 40) -> dict[str, list[str]]:
    """``total`` tasks, the first ``n_right`` answered 5 -> 7 -> 7 (revised), the rest 5, 5, 5."""
    return {f"t{i}": (["5", "7", "7"] if i < n_right else ["5", "5", "5"]) for i in range(total)}
