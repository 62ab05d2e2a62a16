"""RISE curation: selection criteria, weights, ids, boost, accumulation and the curate stage."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from pipeline.config.settings import parse_config
from pipeline.methods.rise.curate_stage import CurateError, run_curate_stage
from pipeline.methods.rise.curation import (
    Example,
    accumulate,
    boost_examples,
    cap_keeps,
    count_skips,
    curate,
    format_summary,
    pair_examples,
    rationale_examples,
    refuted_examples,
    summarize,
    weight_histogram,
)
from pipeline.rollouts.records import Candidate, TrajectoryRecord, TurnRecord
from pipeline.run.layout import RunDir
from pipeline.run.manifest import StageState
from pipeline.system.atomic import read_jsonl
from rewards import GradeResult
from tests.helpers.rollout_records import candidate, grade, make_record
from tests.helpers.runs import TAU, arithmetic_tasks, curation_run, finish_rollout

TRAJECTORIES = {"a": [0, 0, 1], "b": [0.5, 0.2, 0.7], "c": [1], "d": [0, 0.5, 0.5]}
KEPT = {
    "all": {"a": [1, 2, 3], "b": [1, 2, 3], "c": [1], "d": [1, 2, 3]},
    "better": {"a": [3], "b": [1, 3], "c": [1], "d": [2]},
    "best": {"a": [1, 2, 3], "b": [1, 3], "c": [1], "d": [1, 2, 3]},
    "success": {"a": [3], "c": [1]},
}


def table_records() -> list[TrajectoryRecord]:
    return [make_record(task, rewards) for task, rewards in TRAJECTORIES.items()]


def kept_turns(examples: list[Example]) -> dict[str, list[int]]:
    kept: dict[str, list[int]] = {}
    for example in examples:
        kept.setdefault(example.task_id, []).append(example.turn)
    return kept


@pytest.mark.parametrize("selection", sorted(KEPT))
def test_selection_keeps_exactly_the_documented_turns(selection: str) -> None:
    assert kept_turns(curate(table_records(), TAU, selection, iteration=1)) == KEPT[selection]


def test_examples_carry_history_best_action_and_rrw_weight() -> None:
    records = table_records()
    examples = curate(records, TAU, "all", iteration=2)
    by_id = {e.example_id: e for e in examples}
    b2 = by_id["2:b#0:t2"]
    assert b2.messages == records[1].turns[1].messages
    assert [m["content"] for m in b2.messages] == ["solve b", "b answer 1", "feedback 1"]
    assert b2.completion == "b answer 2"
    assert (b2.reward, b2.source, b2.iteration, b2.key) == (0.2, "rollout", 2, "b#0")
    for example in examples:
        assert example.weight == math.exp(example.reward / TAU)
    assert by_id["2:c#0:t1"].weight == math.exp(1 / 0.4)


def test_example_ids_are_unique_and_stable_across_reruns() -> None:
    first = curate(table_records(), TAU, "all", iteration=1)
    again = curate(table_records(), TAU, "all", iteration=1)
    assert [e.example_id for e in first] == [e.example_id for e in again]
    assert len({e.example_id for e in first}) == len(first) == 10
    other_sample = curate([make_record("a", [0, 0, 1], sample=1)], TAU, "all", iteration=1)
    assert {e.example_id for e in other_sample}.isdisjoint(e.example_id for e in first)
    next_iteration = curate(table_records(), TAU, "all", iteration=2)
    assert {e.example_id for e in next_iteration}.isdisjoint(e.example_id for e in first)


def test_empty_responses_and_grading_errors_are_skipped_and_counted() -> None:
    record = make_record("e", [0.5, 0.0, 1.0], error="turn 4: server gone")
    record.turns[0].response = "  "
    record.turns[1].grade = grade(0.0, error="timeout")
    examples = curate([record], TAU, "all", iteration=1)
    assert kept_turns(examples) == {"e": [3]}
    assert count_skips([record, make_record("f", [1])]) == {"empty_response": 1, "grading_error": 1}


def test_skipped_turns_still_count_as_previous_rewards() -> None:
    record = make_record("g", [0.5, 0.5])
    record.turns[0].response = ""
    assert curate([record], TAU, "better", iteration=1) == []
    assert kept_turns(curate([record], TAU, "best", iteration=1)) == {"g": [2]}


def test_unknown_selection_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown selection 'most'"):
        curate(table_records(), TAU, "most", iteration=1)  # type: ignore[arg-type]


def test_boost_takes_every_correct_first_turn_candidate_once_per_task() -> None:
    duplicate = candidate("x answer 1", 1.0)
    records = [
        make_record("x", [1.0], extra={1: [candidate("x other", 1.0), duplicate, candidate("x wrong", 0.0)]}),
        make_record("x", [0.0], sample=1, extra={1: [candidate("x other", 1.0), candidate("x third", 1.0)]}),
        make_record("y", [0.0, 1.0], extra={1: [candidate("y bad", 1.0, error="timeout"), candidate(" ", 1.0)]}),
    ]
    boosted = boost_examples(records, TAU, iteration=1)
    assert [(e.task_id, e.completion) for e in boosted] == [
        ("x", "x answer 1"),
        ("x", "x other"),
        ("x", "x third"),
    ]
    assert all(e.source == "boost" and e.turn == 1 and e.weight == math.exp(1 / TAU) for e in boosted)
    assert boosted[0].messages == records[0].turns[0].messages
    assert len({e.example_id for e in boosted}) == 3
    assert [e.example_id for e in boost_examples(records, TAU, 1)] == [e.example_id for e in boosted]


def test_accumulate_is_a_union_with_earlier_iterations_first() -> None:
    first = curate(table_records(), TAU, "success", iteration=1)
    second = accumulate(curate(table_records(), TAU, "success", iteration=2), [first])
    third_current = curate(table_records(), TAU, "success", iteration=3)
    third = accumulate(third_current, [first, second])
    assert [e.example_id for e in third] == [
        "1:a#0:t3",
        "1:c#0:t1",
        "2:a#0:t3",
        "2:c#0:t1",
        "3:a#0:t3",
        "3:c#0:t1",
    ]
    assert accumulate(third_current, [third]) == third


def test_summary_counts_and_histogram() -> None:
    earlier = curate(table_records(), TAU, "success", iteration=1)
    current = curate(table_records(), TAU, "better", iteration=2) + boost_examples(table_records(), TAU, 2)
    examples = accumulate(current, [earlier])
    summary = summarize(examples, 2, TAU, "better", {"empty_response": 0, "grading_error": 1})
    assert summary["examples"] == 8
    assert summary["by_source"] == {"rollout": 5, "boost": 1, "pair": 0, "rationale": 0, "refuted": 0, "accumulated": 2}
    assert summary["by_turn"] == {"1": 4, "2": 1, "3": 3}
    assert summary["skipped"] == {"empty_response": 0, "grading_error": 1}
    assert summary["mean_reward"] == pytest.approx(sum(e.reward for e in examples) / 8)
    histogram = summary["weight_histogram"]
    assert histogram["edges"][0] == 1.0 and histogram["edges"][-1] == pytest.approx(math.exp(1 / TAU))
    assert len(histogram["counts"]) == 10 and sum(histogram["counts"]) == 8
    assert histogram["counts"][-1] == 5  # the five reward-1 examples sit in the top bin
    text = _render(format_summary(summary))
    assert "boost" in text and "accumulated" in text and "mean reward" in text


def test_weight_histogram_puts_out_of_range_weights_in_the_edge_bins() -> None:
    examples = [_example(reward) for reward in (-0.5, 0.0, 0.5, 1.0, 1.5)]
    assert weight_histogram(examples, TAU, bins=2)["counts"] == [3, 2]


def _example(reward: float) -> Example:
    return Example(f"id{reward}", "rollout", 1, "t", "t#0", 1, [], "x", reward, math.exp(reward / TAU))


def _render(table: Any) -> str:
    console = Console(width=120, record=True)
    console.print(table)
    return console.export_text()


# --- the stage ---------------------------------------------------------------


def test_stage_writes_train_set_and_summary_and_records_them(tmp_path: Path) -> None:
    run = curation_run(tmp_path, selection="better", boost=True, accumulate=True)
    finish_rollout(run, 1, table_records())
    path = run_curate_stage(run, 1)
    assert path == run.root / "iter_1" / "curate" / "train.jsonl"
    rows = read_jsonl(path)
    expected = curate(table_records(), TAU, "better", 1) + boost_examples(table_records(), TAU, 1)
    assert rows == [e.to_dict() for e in expected]
    summary = json.loads((path.parent / "summary.json").read_text())
    assert summary["by_source"] == {"rollout": 5, "boost": 1, "pair": 0, "rationale": 0, "refuted": 0, "accumulated": 0}
    record = run.manifest.record(1, "curate")
    assert record.state is StageState.DONE
    assert set(record.outputs) == {"iter_1/curate/train.jsonl", "iter_1/curate/summary.json"}

    finish_rollout(run, 2, table_records()[:2])
    rows2 = read_jsonl(run_curate_stage(run, 2))
    assert rows2[: len(rows)] == rows
    assert [r["example_id"] for r in rows2[len(rows) :]] == ["2:a#0:t3", "2:b#0:t1", "2:b#0:t3"]


def test_stage_without_accumulation_uses_only_this_iteration(tmp_path: Path) -> None:
    run = curation_run(tmp_path, selection="success", accumulate=False)
    finish_rollout(run, 2, table_records())
    rows = read_jsonl(run_curate_stage(run, 2))
    assert [r["example_id"] for r in rows] == ["2:a#0:t3", "2:c#0:t1"]


def test_rerun_of_a_done_stage_is_a_no_op(tmp_path: Path) -> None:
    run = curation_run(tmp_path)
    finish_rollout(run, 1, table_records())
    path = run_curate_stage(run, 1)
    before = (path.read_bytes(), path.stat().st_mtime_ns, run.manifest.record(1, "curate").to_dict())
    finish_rollout(run, 1, table_records()[:1])  # a changed input must not be picked up
    assert run_curate_stage(run, 1) == path
    assert (path.read_bytes(), path.stat().st_mtime_ns, run.manifest.record(1, "curate").to_dict()) == before


def test_missing_rollouts_are_a_clear_error_recorded_in_the_manifest(tmp_path: Path) -> None:
    run = curation_run(tmp_path)
    with pytest.raises(CurateError, match="iteration 1's rollout stage is not done"):
        run_curate_stage(run, 1)
    record = run.manifest.record(1, "curate")
    assert record.state is StageState.FAILED and "rollout stage is not done" in record.error
    assert not (run.root / "iter_1" / "curate" / "train.jsonl").exists()


def test_accumulation_needs_the_earlier_curate_output(tmp_path: Path) -> None:
    run = curation_run(tmp_path, accumulate=True)
    finish_rollout(run, 2, table_records())
    with pytest.raises(CurateError, match="iteration 1's curate output"):
        run_curate_stage(run, 2)


def test_stage_refuses_a_non_rise_method(tmp_path: Path) -> None:
    run = RunDir.create(
        parse_config(
            {
                "run": {"name": "x", "output_dir": str(tmp_path)},
                "tasks": arithmetic_tasks(),
                "method": {"name": "exit"},
            }
        )
    )
    with pytest.raises(CurateError, match="method is 'exit'"):
        run_curate_stage(run, 1)


# --- Issue 14: no answer is a wrong answer; self-correction constructions ---


def unparsed(turn: TurnRecord) -> None:
    """Make a turn's chosen answer one the grader found no answer in (parsed None, no error)."""
    turn.grade = turn.candidates[0].grade = replace(turn.grade, parsed=None, score=0.0, correct=False)


def test_turns_without_an_answer_are_curated_at_the_unparsed_reward() -> None:
    record = make_record("u", [0.0, 1.0])
    unparsed(record.turns[0])
    examples = curate([record], TAU, "all", iteration=1, unparsed_reward=-1.0)
    first, second = examples
    assert (first.turn, first.reward, first.weight, first.answered) == (1, -1.0, math.exp(-1 / TAU), False)
    assert (second.reward, second.answered, second.kind) == (1.0, True, "fix")
    assert curate([record], TAU, "all", iteration=1, unparsed_reward=0.0)[0].reward == 0.0
    assert count_skips([record]) == {"empty_response": 0, "grading_error": 0}
    summary = summarize(examples, 1, TAU, "all", count_skips([record]))
    assert summary["unparsed"] == 1 and summary["by_kind"] == {"first": 1, "fix": 1, "retry": 0, "keep": 0}


def test_better_compares_against_the_unparsed_reward() -> None:
    """A wrong answer (0) after no answer (-1) is better, as in the reference code."""
    record = make_record("v", [0.0, 0.0])
    unparsed(record.turns[0])
    assert [e.turn for e in curate([record], TAU, "better", iteration=1)] == [2]


def test_keep_targets_carry_the_previous_correct_answer() -> None:
    """Collection went on after a success: turn 2 answers right again after "incorrect"."""
    record = make_record("k", [1.0, 1.0, 0.0])
    examples = curate([record], TAU, "success", iteration=1)
    keep = next(e for e in examples if e.kind == "keep")
    assert keep.turn == 2
    assert keep.messages[-2] == {"role": "assistant", "content": "k answer 1"}  # the correct answer it keeps
    assert [e.kind for e in curate([record], TAU, "all", iteration=1)] == ["first", "keep", "keep"]


def test_keep_cap_holds_relative_to_fix_examples() -> None:
    fixes = [make_record(f"f{i}", [0.0, 1.0]) for i in range(2)]
    keeps = [make_record(f"k{i}", [1.0, 1.0]) for i in range(5)]
    examples = curate(fixes + keeps, TAU, "success", iteration=1)
    assert sum(e.kind == "keep" for e in examples) == 5
    for ratio, allowed in ((0.0, 0), (1.0, 2), (1.5, 3), (10.0, 5)):
        capped = cap_keeps(examples, ratio)
        assert sum(e.kind == "keep" for e in capped) == allowed
        assert [e for e in capped if e.kind != "keep"] == [e for e in examples if e.kind != "keep"]
    assert cap_keeps(examples, 1.0) == cap_keeps(list(examples), 1.0)  # deterministic


def test_pairs_pair_a_wrong_sample_with_a_right_one_of_the_same_state() -> None:
    from pipeline.config.settings import TemplatesSection

    record = make_record("p", [0.0, 0.0], extra={2: [candidate("p right", 1.0), candidate("p wrong b", 0.0)]})
    other = make_record("q", [1.0])  # one sample per state: no pairs
    templates = TemplatesSection()
    pairs = pair_examples(
        [record, other], TAU, 1, per_state=2, feedback="binary", templates=templates, history_window=None
    )
    assert [p.completion for p in pairs] == ["p right", "p right"]
    first, second = pairs
    assert (first.source, first.kind, first.turn, first.task_id) == ("pair", "fix", 3, "p")
    contents = [m["content"] for m in first.messages]
    # The state of turn 2 (prompt, turn 1's attempt and feedback), then a wrong sample of turn 2 and "incorrect".
    assert contents == ["solve p", "p answer 1", "feedback 1", "p answer 2", templates.binary_feedback]
    assert second.messages[-2]["content"] == "p wrong b"
    assert first.weight == math.exp(1 / TAU) and first.example_id != second.example_id
    windowed = pair_examples([record], TAU, 1, 1, "binary", templates, history_window=1)
    assert [m["content"] for m in windowed[0].messages] == ["solve p", "p answer 2", templates.binary_feedback]


def test_informative_only_drops_states_whose_samples_all_succeed() -> None:
    mixed = make_record("m", [1.0], extra={1: [candidate("m wrong", 0.0)]})
    easy = make_record("e", [1.0], extra={1: [candidate("e also right", 1.0)]})
    single = make_record("s", [1.0])
    kept = curate([mixed, easy, single], TAU, "success", iteration=1, informative_only=True)
    assert [e.task_id for e in kept] == ["m", "s"]
    assert len(curate([mixed, easy, single], TAU, "success", iteration=1)) == 3


def test_rationales_are_targets_for_their_state_without_the_hint() -> None:
    """STaR's rationalization: a hinted right answer answers the turn's own (unhinted) history."""
    hard = make_record(
        "h", [0.0, 0.0, 0.0], rationales={1: candidate("h hinted 1", 1.0), 3: candidate("h hinted 3", 1.0)}
    )
    examples = rationale_examples([hard, make_record("e", [1.0])], TAU, iteration=2)
    assert [(e.turn, e.kind, e.source, e.completion) for e in examples] == [
        (1, "first", "rationale", "h hinted 1"),
        (3, "fix", "rationale", "h hinted 3"),
    ]
    assert examples[1].messages == hard.turns[2].messages  # turn 3's history, as the model saw it
    assert [m["content"] for m in examples[1].messages][-2:] == ["h answer 2", "feedback 2"]
    assert examples[1].weight == math.exp(1 / TAU)
    assert len({e.example_id for e in examples} | {e.example_id for e in curate([hard], TAU, "all", 2)}) == 5


def test_records_without_rationales_are_written_as_before() -> None:
    plain = make_record("p", [0.0, 1.0]).to_dict()
    assert all("rationale" not in turn for turn in plain["turns"])
    hinted = make_record("p", [0.0, 1.0], rationales={1: candidate("p hinted", 1.0)}).to_dict()
    assert hinted["turns"][0]["rationale"]["response"] == "p hinted" and "rationale" not in hinted["turns"][1]


def test_stage_adds_rationales_and_counts_them_as_fixes(tmp_path: Path) -> None:
    run = curation_run(tmp_path, stop_at_success=False, selection="success", rationalize=1, keep_ratio=1.0)
    records = [
        make_record("r", [0.0, 0.0], rationales={2: candidate("r hinted", 1.0)}),
        *(make_record(f"k{i}", [1.0, 1.0]) for i in range(3)),
    ]
    finish_rollout(run, 1, records)
    summary = json.loads((run_curate_stage(run, 1).parent / "summary.json").read_text())
    assert summary["by_source"]["rationale"] == 1
    assert summary["by_kind"] == {
        "first": 3,
        "fix": 1,
        "retry": 0,
        "keep": 1,
    }  # one fix (the rationale) allows one keep


def _answer(response: str, answer: str, correct: bool) -> Candidate:
    """A candidate whose grade read ``answer`` from ``response``."""
    grade = GradeResult(score=float(correct), correct=correct, parsed=answer, feedback="fb", answer_key=answer)
    return Candidate(response, grade, completion_tokens=5, finish_reason="stop")


def _refuted_record() -> TrajectoryRecord:
    """Turn 1 answers 5 (wrong), turn 2 answers 6 (wrong) among samples that repeat 5, turn 3 samples repeat both."""
    record = make_record("r", [0.0, 0.0, 0.0])
    turns = record.turns
    turns[0].candidates = [_answer("x = 5", "5", False)]
    turns[1].candidates = [
        _answer("x = 6", "6", False),
        _answer("It is 5, so 5", "5", False),
        _answer("It is 5, so 5", "5", False),
        _answer("x = 7", "7", True),
    ]
    turns[2].candidates = [
        _answer("6", "6", False),
        _answer("5.", "5", False),
        _answer("\\boxed{6}", "6", False),
        _answer("six", "6", False),
    ]
    for turn in turns:
        turn.grade, turn.response = turn.candidates[0].grade, turn.candidates[0].response
    return record


def test_refuted_examples_mark_each_distinct_repeat_of_a_refuted_answer() -> None:
    examples = refuted_examples([_refuted_record(), make_record("s", [1.0])], weight=0.5, iteration=2)
    found = [(e.turn, e.completion, e.completion[slice(*e.refuted_span)]) for e in examples]
    # Turn 2: only 5 was refuted (6 is new, 7 is right; the duplicate sample counts once). Turn 3: 5 and 6 both
    # were; an answer whose text is not in the response as the grader read it has nothing to mark.
    assert found == [(2, "It is 5, so 5", "5"), (3, "6", "6"), (3, "5.", "5"), (3, "\\boxed{6}", "6")]
    assert examples[0].refuted_span == (12, 13)  # the last occurrence: the answer, not the working
    assert all(e.source == "refuted" and e.weight == 0.5 and e.kind is None for e in examples)
    assert examples[0].messages == _refuted_record().turns[1].messages
    assert len({e.example_id for e in examples}) == len(examples)
    assert Example.from_dict(json.loads(json.dumps(examples[0].to_dict()))) == examples[0]


def test_stage_adds_refuted_examples_only_when_configured(tmp_path: Path) -> None:
    run = curation_run(tmp_path, stop_at_success=True)
    finish_rollout(run, 1, [_refuted_record()])
    run_curate_stage(run, 1)
    rows = read_jsonl(run.stage_dir(1, "curate") / "train.jsonl")
    assert not any(row["refuted_span"] for row in rows)
    on = curation_run(tmp_path / "on", stop_at_success=True, refuted_weight=1.0)
    finish_rollout(on, 1, [_refuted_record()])
    run_curate_stage(on, 1)
    rows = read_jsonl(on.stage_dir(1, "curate") / "train.jsonl")
    assert sum(row["refuted_span"] is not None for row in rows) == 4
    summary = json.loads((on.stage_dir(1, "curate") / "summary.json").read_text())
    assert summary["by_source"]["refuted"] == 4
