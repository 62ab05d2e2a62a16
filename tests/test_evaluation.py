"""Eval summaries on hand-built rollout records, against hand-computed figures."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest
from rich.console import Console
from rich.table import Table

from pipeline.eval.evaluation import (
    count_incomplete,
    format_eval_table,
    per_task_rows,
    summarize_curves,
    summarize_eval,
)
from pipeline.eval.metrics import TurnOutcome
from pipeline.rollouts.records import TrajectoryRecord
from tests.helpers.eval_records import Answers, graded_record, make_record, parallel_record


def make_records(tasks: dict[str, list[Answers]]) -> list[dict[str, Any]]:
    """Records for task id -> one answer list per trajectory (sample = list index)."""
    return [
        make_record(task_id, sample, answers)
        for task_id, trajectories in tasks.items()
        for sample, answers in enumerate(trajectories)
    ]


def test_per_turn_pass_at_k_matches_hand_computation() -> None:
    records = make_records(
        {
            # turn 1: c=2 of 4; turn 2: c=4
            "a": [["7", "7"], ["7", "7"], ["5", "7"], ["5", "7"]],
            # turn 1: c=0; turn 2: c=1
            "b": [["5", "5"], ["5", "5"], ["5", "7"], ["1", "1"]],
        }
    )
    per_turn = summarize_eval(records, turns=2, samples=4)["per_turn"]
    assert [row["turn"] for row in per_turn] == [1, 2]
    # Task a at turn 1: pass@2 = 1 - C(2,2)/C(4,2) = 5/6, pass@3 = pass@4 = 1; task b: 0.
    assert per_turn[0]["pass@1"] == pytest.approx(0.25)
    assert per_turn[0]["pass@k"] == pytest.approx({"1": 0.25, "2": 5 / 12, "3": 0.5, "4": 0.5})
    # Task b at turn 2 (c=1): pass@2 = 1 - C(3,2)/C(4,2) = 1/2, pass@3 = 1 - C(3,3)/C(4,3) = 3/4; task a: 1.
    assert per_turn[1]["pass@k"] == pytest.approx({"1": 0.625, "2": 0.75, "3": 0.875, "4": 1.0})
    assert per_turn[1]["pass@1"] == per_turn[1]["pass@k"]["1"]


def test_m1_at_t_votes_within_each_trajectory_with_ties_and_abstentions() -> None:
    records = make_records(
        {
            # 7 wins 2:1 (right); 5 and 7 tie, the earlier 5 wins (wrong).
            "a": [["5", "7", "7"], ["5", "7", None]],
            # abstentions do not vote: lone 7 wins (right); 7/5 tie goes to the earlier 7 (right).
            "b": [[None, None, "7"], [None, "7", "5"]],
        }
    )
    assert summarize_eval(records, turns=3, samples=2)["m1@t3"] == pytest.approx((0.5 + 1.0) / 2)


def test_m1_at_t_is_wrong_when_every_turn_abstains() -> None:
    records = make_records({"a": [[None, None], ["7", None]]})
    assert summarize_eval(records, turns=2, samples=2)["m1@t2"] == pytest.approx(0.5)


def test_p1_at_t_counts_any_correct_turn() -> None:
    records = make_records(
        {
            "a": [["5", "5", "5"], ["5", "5", "7"]],
            "b": [["1", "2", "3"], ["3", "2", "1"]],
        }
    )
    assert summarize_eval(records, turns=3, samples=2)["p1@t3"] == pytest.approx(0.25)


def test_parallel_baseline_from_given_first_turn_samples() -> None:
    records = make_records({"a": [["7", "7", "7"]], "b": [["7", "7", "7"]]})
    right, wrong, abstain = TurnOutcome("7", True), TurnOutcome("5", False), TurnOutcome(None, False)
    first_turn = {
        "a": [right, wrong, wrong],  # 5 wins: wrong
        "b": [right, abstain, wrong, wrong, wrong],  # only the first 3 vote: 7/5 tie, earlier 7 wins
    }
    summary = summarize_eval(records, turns=3, samples=1, first_turn_samples=first_turn)
    assert summary["m3@t1"] == pytest.approx(0.5)


def test_parallel_baseline_falls_back_to_first_turns_of_trajectories() -> None:
    records = make_records(
        {
            "a": [["7", "5", "5"], ["5", "5", "5"], ["7", "5", "5"]],  # first turns 7, 5, 7: right
            "b": [["5", "7", "7"], ["5", "7", "7"], ["7", "7", "7"]],  # first turns 5, 5, 7: wrong
        }
    )
    assert summarize_eval(records, turns=3, samples=3)["m3@t1"] == pytest.approx(0.5)


def test_parallel_baseline_is_null_without_enough_samples() -> None:
    records = make_records({"a": [["7", "7", "7"], ["7", "7", "7"]]})
    summary = summarize_eval(records, turns=3, samples=2)
    assert summary["m3@t1"] is None
    json.dumps(summary)


def test_parallel_baseline_rejects_mismatched_first_turn_samples() -> None:
    records = make_records({"a": [["7", "7"]], "b": [["7", "7"]]})
    two = [TurnOutcome("7", True)] * 2
    with pytest.raises(ValueError, match="missing \\['b'\\]"):
        summarize_eval(records, turns=2, samples=1, first_turn_samples={"a": two})
    with pytest.raises(ValueError, match="task 'b' has 1 first-turn samples"):
        summarize_eval(records, turns=2, samples=1, first_turn_samples={"a": two, "b": two[:1]})


def test_self_correction_deltas() -> None:
    records = make_records(
        {
            "a": [["5", "7"], ["7", "5"]],  # i->c, c->i
            "b": [["7", "7"], ["5", "7"]],  # c->c, i->c
        }
    )
    summary = summarize_eval(records, turns=2, samples=2)
    assert summary["delta_i_to_c"] == pytest.approx(0.5)
    assert summary["delta_c_to_i"] == pytest.approx(0.25)
    assert summary["delta_t1_tT"] == pytest.approx(0.75 - 0.5)
    assert summary["delta_t1_tT"] == pytest.approx(summary["delta_i_to_c"] - summary["delta_c_to_i"])


def test_summary_has_exactly_the_specified_keys() -> None:
    records = make_records({"a": [["5", "7", "7"], ["7", "7", "7"]], "b": [["5", "5", "5"], ["5", "5", "7"]]})
    summary = summarize_eval(records, turns=3, samples=2)
    assert set(summary) == {
        "n_tasks", "turns", "samples", "per_turn",
        "m1@t3", "p1@t3", "m3@t1", "p3@t1",
        "delta_t1_tT", "delta_i_to_c", "delta_c_to_i",
        "intervals", "incomplete", "bootstrap_seed", "transitions",
    }  # fmt: skip
    # n=2 < T=3 and no parallel samples: the baselines, and so the gaps, are not measured.
    assert summary["m3@t1"] is None and summary["p3@t1"] is None
    assert set(summary["intervals"]) == {"pass@1 turn 1", "pass@1 turn 2", "pass@1 turn 3"}
    assert (summary["n_tasks"], summary["turns"], summary["samples"]) == (2, 3, 2)
    assert all(set(row) == {"turn", "pass@1", "pass@k"} for row in summary["per_turn"])
    assert json.loads(json.dumps(summary)) == summary


def test_errored_trajectory_counts_missing_turns_as_wrong_abstentions() -> None:
    records = [make_record("a", 0, ["7"], error="turn 2: server unreachable"), make_record("a", 1, ["5", "7", "7"])]
    summary = summarize_eval(records, turns=3, samples=2)
    assert [row["pass@1"] for row in summary["per_turn"]] == pytest.approx([0.5, 0.5, 0.5])
    assert summary["m1@t3"] == pytest.approx(1.0)  # ["7", -, -] votes 7; ["5", "7", "7"] votes 7
    assert summary["delta_c_to_i"] == pytest.approx(0.5)
    assert summary["delta_i_to_c"] == pytest.approx(0.5)
    assert count_incomplete(records, turns=3) == 1
    assert count_incomplete(records, turns=1) == 0


def test_short_trajectory_without_error_is_rejected() -> None:
    records = [make_record("a", 0, ["7"]), make_record("a", 1, ["5", "7", "7"])]
    with pytest.raises(ValueError, match="a#0 has 1 of 3 turns and no error"):
        summarize_eval(records, turns=3, samples=2)


def test_wrong_sample_counts_raise_naming_the_task() -> None:
    records = make_records({"a": [["7", "7"], ["5", "5"]], "b": [["7", "7"]]})
    with pytest.raises(ValueError, match="task 'b' has 1 trajectories, expected samples=2"):
        summarize_eval(records, turns=2, samples=2)
    with pytest.raises(ValueError, match="task 'a': sample 0 appears more than once"):
        summarize_eval(records + [make_record("a", 0, ["7", "7"])], turns=2, samples=2)
    with pytest.raises(ValueError, match="no rollout records"):
        summarize_eval([], turns=2, samples=2)


def test_single_turn_summary_is_rejected() -> None:
    with pytest.raises(ValueError, match="turns >= 2"):
        summarize_eval(make_records({"a": [["7"]]}), turns=1, samples=1)


def test_per_task_rows_cover_every_turn() -> None:
    records = [make_record("a", 0, ["5", "7"]), make_record("a", 1, [None], error="turn 2: timeout")]
    assert per_task_rows(records, turns=2) == [
        {"task_id": "a", "sample": 0, "turn": 1, "parsed": "5", "correct": False, "score": 0.0},
        {"task_id": "a", "sample": 0, "turn": 2, "parsed": "7", "correct": True, "score": 1.0},
        {"task_id": "a", "sample": 1, "turn": 1, "parsed": None, "correct": False, "score": 0.0},
        {"task_id": "a", "sample": 1, "turn": 2, "parsed": None, "correct": False, "score": None},
    ]


def test_format_eval_table_shows_per_turn_pass_at_1_and_headlines() -> None:
    summary = summarize_eval(make_records({"a": [["5", "7", "7"], ["7", "7", "7"]]}), turns=3, samples=2)
    table = format_eval_table(summary)
    assert isinstance(table, Table)
    assert table.row_count == 3 + 9  # per-turn pass@1, 7 headlines, the incomplete count, the grading errors
    console = Console(record=True, width=120)
    console.print(table)
    text = console.export_text()
    for label in (
        "pass@1 turn 1",
        "pass@1 turn 3",
        "m1@t3",
        "p1@t3",
        "m3@t1",
        "p3@t1",
        "delta_c_to_i",
        "incomplete",
        "grading errors",
    ):
        assert label in text
    assert "n/a" in text  # m3@t1 is null with 2 samples and 3 turns
    assert "0.5000" in text  # pass@1 at turn 1


def test_curves_compare_m1_at_tk_with_mk_at_t1_for_every_k() -> None:
    # Task a: the trajectory answers 5, 7, 7 -> m1@t1 wrong, m1@t2 tie (5 first) wrong, m1@t3 7 wins.
    # Task b: 7, 5, 5 -> right, right (tie, 7 first), wrong.
    records = make_records({"a": [["5", "7", "7"]], "b": [["7", "5", "5"]]})
    right, wrong = TurnOutcome("7", True), TurnOutcome("5", False)
    first_turn = {"a": [wrong, right, right], "b": [right, wrong, wrong]}
    curves = summarize_curves(records, turns=3, samples=1, first_turn_samples=first_turn)
    assert curves["k"] == [1, 2, 3]
    assert curves["sequential"] == pytest.approx([0.5, 0.5, 0.5])
    # a: 5 | 5,7 tie -> 5 | 5,7,7 -> 7;  b: 7 | 7,5 tie -> 7 | 7,5,5 -> 5
    assert curves["parallel"] == pytest.approx([0.5, 0.5, 0.5])
    summary = summarize_eval(records, turns=3, samples=1, first_turn_samples=first_turn)
    assert (curves["sequential"][-1], curves["parallel"][-1]) == (summary["m1@t3"], summary["m3@t1"])


def test_curves_leave_parallel_points_without_enough_samples_empty() -> None:
    records = make_records({"a": [["7", "5", "5"], ["5", "7", "7"]]})
    curves = summarize_curves(records, turns=3, samples=2)
    assert curves["parallel"][:2] == pytest.approx([1.0, 1.0])  # 7 | 7,5 tie -> 7
    assert curves["parallel"][2] is None
    assert curves["sequential"] == pytest.approx([0.5, 0.5, 0.5])


def test_first_turn_samples_count_missing_candidates_as_wrong_abstentions() -> None:
    from pipeline.eval.evaluation import first_turn_samples

    full = make_record("a", 0, ["7"])
    full.turns[0].candidates *= 3
    failed = make_record("b", 0, [], error="turn 1: server unreachable")
    samples = first_turn_samples([full, failed], turns=3)
    assert samples["a"] == [TurnOutcome("7", True)] * 3
    assert samples["b"] == [TurnOutcome(None, False)] * 3


# --- Issue 13: votes compare canonical answer keys; the oracle baseline pk@t1 ---


def test_numeric_spellings_of_one_number_vote_together() -> None:
    """84/2, 42 and 42.0 are one answer: with parsed strings they split and a wrong answer won."""
    responses = ["\\boxed{41}", "\\boxed{84/2}", "\\boxed{41}", "\\boxed{42}", "\\boxed{42.0}"]
    records = [graded_record("t", 0, responses, "numeric", "42")]
    # By parsed text the vote ties 41 (2) against 42 (2) and the earlier 41 wins; by value 42 has 3.
    assert [t.grade.parsed for t in records[0].turns] == ["41", "84/2", "41", "42", "42"]
    assert summarize_eval(records, turns=5, samples=1)["m1@t5"] == 1.0
    records = [
        graded_record(
            "t",
            0,
            ["\\boxed{41}", "\\boxed{\\frac{84}{2}}", "\\boxed{41}", "It is 42.", "\\boxed{42.00}"],
            "numeric",
            "42",
        )
    ]
    assert summarize_eval(records, turns=5, samples=1)["m1@t5"] == 1.0


def test_math_equivalence_classes_vote_together() -> None:
    """\\frac12, 0.5 and 2/4 are one class after merging; 1/3 twice still loses to them."""
    from pipeline.eval.evaluation import merge_answer_classes
    from rewards import get_grader

    responses = ["\\boxed{\\frac{1}{3}}", "\\boxed{\\frac12}", "\\boxed{1/3}", "\\boxed{0.5}", "\\boxed{2/4}"]
    records = [graded_record("t", 0, responses, "math", "\\frac{1}{2}")]
    merge_answer_classes(records, get_grader("math").cluster_keys)
    keys = [t.grade.answer_key for t in records[0].turns]
    assert keys[1] == keys[3] == keys[4] and keys[0] == keys[2] and keys[0] != keys[1]
    assert summarize_eval(records, turns=5, samples=1)["m1@t5"] == 1.0


def test_merged_classes_are_per_task() -> None:
    """Two tasks never share classes: each task's keys are clustered on their own."""
    from pipeline.eval.evaluation import merge_answer_classes

    records = [graded_record(task, 0, ["\\boxed{1}", "\\boxed{2}"], "numeric", "1") for task in ("a", "b")]
    calls: list[list[str]] = []
    merge_answer_classes(records, lambda keys: calls.append(list(keys)) or {k: k for k in keys})
    assert calls == [["1", "2"], ["1", "2"]]


def test_oracle_parallel_baseline_on_hand_built_records() -> None:
    """p3@t1: any of 3 parallel first answers right. Task a: trajectory never right, parallel right once."""
    records = make_records({"a": [["5", "5", "5"]], "b": [["5", "7", "7"]]})
    parallel = {
        "a": [TurnOutcome("5", False), TurnOutcome("7", True), TurnOutcome("5", False)],
        "b": [TurnOutcome("5", False)] * 3,
    }
    summary = summarize_eval(records, turns=3, samples=1, first_turn_samples=parallel)
    assert summary["p1@t3"] == 0.5 and summary["p3@t1"] == 0.5
    assert summary["m3@t1"] == 0.0  # 5 wins both parallel votes
    curves = summarize_curves(records, turns=3, samples=1, first_turn_samples=parallel)
    assert curves["parallel_oracle"] == [0.0, 0.5, 0.5]
    assert curves["sequential_oracle"] == [0.0, 0.5, 0.5]
    gap = summary["intervals"]["p1@t3-p3@t1"]
    assert gap["estimate"] == 0.0 and gap["low"] <= 0.0 <= gap["high"]


def test_incomplete_trajectories_are_counted() -> None:
    records = make_records({"a": [["7", "7"]]}) + [make_record("b", 0, ["5"], error="request failed")]
    assert summarize_eval(records, turns=2, samples=1)["incomplete"] == 1


# --- Issue 33: transition rates, revision against the parallel samples ---


def with_key(record: TrajectoryRecord, turn: int, key: str) -> TrajectoryRecord:
    """Give one turn's grade an answer key other than its text (``42.0`` keyed ``42``)."""
    graded = record.turns[turn - 1]
    graded.grade = replace(graded.grade, answer_key=key)
    return record


def test_eval_json_counts_transitions_by_hand(tmp_path) -> None:
    from pipeline.eval.stage import write_eval_outputs
    from rewards import get_grader

    records = [
        make_record("a", 0, ["5", "5", "7"]),  # repeat, fix
        make_record("b", 0, ["7", None, "5"]),  # flip, other wrong (no answer has no key to repeat)
        make_record("c", 0, ["3"], error="turn 2: server unreachable"),  # no answer, no answer
        with_key(with_key(make_record("d", 0, ["42.0", "42", "6"]), 1, "42"), 2, "42"),  # repeat (keys), other
    ]
    parallel = [
        parallel_record("a", ["7", "5", "5"]),  # flip, repeat
        parallel_record("b", ["5", "7", "7"]),  # fix, keep
        parallel_record("c", ["3"], error="server unreachable"),  # two missing samples: no answer, no answer
        parallel_record("d", ["6", "8", "6"]),  # other wrong, repeat
    ]
    summary = write_eval_outputs(tmp_path, records, parallel, get_grader("numeric"), 3, 1, seed=0, history_window=None)
    found = json.loads((tmp_path / "eval.json").read_text())["transitions"]
    assert found == json.loads(json.dumps(summary["transitions"]))

    def counts(group: dict[str, Any], side: str) -> dict[str, tuple[int, int] | None]:
        return {rate: None if v is None else (v["count"], v["of"]) for rate, v in group[side].items()}

    first, second, everything = found["per_turn"][0], found["per_turn"][1], found["all_turns"]
    assert counts(first, "sequential") == {"fix": (0, 3), "repeat": (2, 3), "flip": (1, 1), "no_answer": (1, 3)}
    assert counts(second, "sequential") == {"fix": (1, 4), "repeat": (0, 4), "flip": None, "no_answer": (1, 4)}
    assert counts(everything, "sequential") == {"fix": (1, 7), "repeat": (2, 7), "flip": (1, 1), "no_answer": (2, 7)}
    assert counts(first, "parallel") == {"fix": (1, 3), "repeat": (0, 3), "flip": (1, 1), "no_answer": (1, 3)}
    assert counts(second, "parallel") == {"fix": (0, 3), "repeat": (2, 3), "flip": (0, 1), "no_answer": (1, 3)}
    assert counts(everything, "parallel") == {"fix": (1, 6), "repeat": (2, 6), "flip": (1, 2), "no_answer": (2, 6)}
    assert everything["difference"]["repeat"]["estimate"] == pytest.approx(2 / 7 - 2 / 6)
    assert everything["difference"]["flip"]["estimate"] == pytest.approx(0.5)
    assert second["difference"]["flip"] is None
    rows = [json.loads(line) for line in (tmp_path / "task_metrics.jsonl").read_text().splitlines()]
    assert rows[2]["steps"]["sequential"][1]["no_answer"] == 1  # task c's errored trajectory, turn 2 -> 3
