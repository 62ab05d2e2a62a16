"""The figures each finished stage logs to the trackers, read from the files the stage wrote."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.run.files import THROUGHPUT_NAME
from pipeline.runner.stage_figures import eval_metrics, rollout_metrics, stage_metrics
from pipeline.system.atomic import write_json_atomic
from tests.helpers.rollout_records import make_record
from tests.helpers.runs import arithmetic_tasks, finish_rollout, make_run


def test_eval_metrics_flatten_the_headline_figures_and_intervals() -> None:
    summary = {
        "turns": 2,
        "per_turn": [{"turn": 1, "pass@1": 0.25}, {"turn": 2, "pass@1": 0.5}],
        "m1@t2": 0.5,
        "p1@t2": 0.75,
        "m2@t1": None,
        "p2@t1": None,
        "delta_i_to_c": 0.25,
        "delta_c_to_i": 0.0,
        "delta_t1_tT": 0.25,
        "incomplete": 0,
        "intervals": {"pass@1 turn 2": {"estimate": 0.5, "low": 0.1, "high": 0.9}},
    }
    metrics = eval_metrics(summary)
    assert metrics["eval/pass@1_turn_2"] == 0.5 and metrics["eval_interval/pass@1_turn_2_high"] == 0.9
    assert "eval/m2@t1" not in metrics  # not measured: left out, never plotted as 0


def test_rollout_metrics_count_right_answers_per_turn_reached() -> None:
    records = [
        make_record("a", [0.0, 1.0]),
        make_record("b", [1.0]),
        make_record("c", [0.0, 0.0, 0.0]),
        make_record("d", [0.0], error="the server went away"),
    ]
    metrics = rollout_metrics(records, {"tokens_per_s": 12.5})
    assert metrics["rollout/accuracy_turn_1"] == pytest.approx(1 / 4)
    assert metrics["rollout/accuracy_turn_2"] == pytest.approx(1 / 2)
    assert metrics["rollout/accuracy_turn_3"] == 0.0
    assert (metrics["rollout/trajectories"], metrics["rollout/errors"], metrics["rollout/solved"]) == (4, 1, 2)
    assert metrics["rollout/tokens_per_s"] == 12.5
    assert "rollout/tokens_per_s" not in rollout_metrics(records, None)


def test_a_finished_rollouts_figures_are_read_from_its_records(tmp_path: Path) -> None:
    run = make_run(tmp_path, tasks=arithmetic_tasks())
    finish_rollout(run, 1, [make_record("a", [0.0, 1.0]), make_record("b", [1.0])])
    write_json_atomic(run.stage_dir(1, "rollout") / THROUGHPUT_NAME, {"tokens_per_s": 3.0})
    metrics = stage_metrics(run, 1, "rollout")
    assert metrics["rollout/accuracy_turn_1"] == 0.5 and metrics["rollout/accuracy_turn_2"] == 1.0
    assert metrics["rollout/tokens_per_s"] == 3.0
    assert stage_metrics(run, 1, "train") == {}
