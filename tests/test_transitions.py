"""The step classifier against hand-counted sequences, no-answer turns included."""

from __future__ import annotations

import pytest

from pipeline.eval.metrics import TurnOutcome
from pipeline.eval.transitions import (
    AFTER_RIGHT,
    AFTER_WRONG,
    Step,
    rate_change,
    steps,
    summarize_transitions,
    task_steps,
)

RIGHT = TurnOutcome("7", True, "7")
NONE = TurnOutcome(None, False)


def wrong(key: str) -> TurnOutcome:
    return TurnOutcome(key, False, key)


@pytest.mark.parametrize(
    ("answers", "expected"),
    [
        ([wrong("5"), RIGHT], [Step.FIX]),
        ([RIGHT, wrong("5")], [Step.FLIP]),
        ([RIGHT, NONE], [Step.FLIP]),
        ([RIGHT, RIGHT], [Step.KEEP]),
        ([wrong("5"), wrong("5")], [Step.REPEAT]),
        ([wrong("5"), wrong("6"), wrong("5")], [Step.OTHER_WRONG, Step.REPEAT]),  # any earlier wrong answer
        ([wrong("5"), NONE, wrong("5")], [Step.NO_ANSWER, Step.REPEAT]),
        ([NONE, NONE], [Step.NO_ANSWER]),
        ([NONE, wrong("5")], [Step.OTHER_WRONG]),  # no answer is wrong, but has no key to repeat
        ([wrong("5"), RIGHT, wrong("5")], [Step.FIX, Step.FLIP]),  # after a right answer: a flip, not a repeat
        ([TurnOutcome("42.0", False, "42"), TurnOutcome("42", False, "42")], [Step.REPEAT]),  # keys, not text
        ([RIGHT], []),
    ],
)
def test_steps_match_a_hand_count(answers: list[TurnOutcome], expected: list[Step]) -> None:
    assert steps(answers) == expected


def test_the_kinds_after_a_right_and_after_a_wrong_answer_partition_the_steps() -> None:
    assert set(AFTER_RIGHT) | set(AFTER_WRONG) == set(Step)
    assert not set(AFTER_RIGHT) & set(AFTER_WRONG)


# --- Rates pooled over tasks, revision against the parallel samples (issue 33) ---


def test_rates_are_step_counts_pooled_over_tasks() -> None:
    five, six = wrong("5"), wrong("6")
    per_task = [
        # revision: REPEAT, FIX | FLIP, NO_ANSWER; parallel: FLIP, REPEAT
        task_steps([[five, five, RIGHT], [RIGHT, NONE, NONE]], [RIGHT, five, five], turns=3),
        # revision: OTHER_WRONG, OTHER_WRONG; parallel: FIX, KEEP
        task_steps([[five, six, NONE]], [six, RIGHT, RIGHT], turns=3),
    ]
    found = summarize_transitions(per_task, turns=3, seed=0)
    first, second, everything = found["per_turn"][0], found["per_turn"][1], found["all_turns"]
    assert (first["from"], first["to"]) == (1, 2)
    # t1 -> t2 revision: after wrong REPEAT, OTHER_WRONG; after right FLIP
    assert (first["sequential"]["repeat"]["count"], first["sequential"]["repeat"]["of"]) == (1, 2)
    assert first["sequential"]["flip"]["estimate"] == 1.0
    # t2 -> t3 revision: after wrong FIX, NO_ANSWER (after the no answer), NO_ANSWER (after 6); nothing after right
    assert second["sequential"]["fix"]["estimate"] == pytest.approx(1 / 3)
    assert second["sequential"]["no_answer"]["estimate"] == pytest.approx(2 / 3)
    assert second["sequential"]["flip"] is None and second["difference"]["flip"] is None
    # all turns: after wrong 5 steps (1 fix, 1 repeat, 2 no answer), after right 1 (flip)
    assert {rate: everything["sequential"][rate]["estimate"] for rate in ("fix", "repeat", "flip", "no_answer")} == (
        pytest.approx({"fix": 0.2, "repeat": 0.2, "flip": 1.0, "no_answer": 0.4})
    )
    # parallel all turns: after wrong REPEAT, FIX; after right FLIP, KEEP
    assert everything["parallel"]["fix"]["estimate"] == 0.5 and everything["parallel"]["flip"]["estimate"] == 0.5
    assert everything["difference"]["fix"]["estimate"] == pytest.approx(0.2 - 0.5)
    for interval in (everything["sequential"]["fix"], everything["difference"]["fix"]):
        assert interval["low"] <= interval["estimate"] <= interval["high"]
    assert found["steps"]["parallel"][0] == {
        "keep": 0,
        "flip": 1,
        "fix": 1,
        "repeat": 0,
        "other_wrong": 0,
        "no_answer": 0,
    }


def test_a_rate_change_between_two_evals_is_paired_over_tasks() -> None:
    five = wrong("5")
    stuck = [task_steps([[five, five, five]], [five, five, five], turns=3)] * 10
    revised = [task_steps([[five, RIGHT, RIGHT]], [five, five, five], turns=3)] * 10
    fix = rate_change(revised, stuck, "fix", seed=0, side="sequential")
    assert fix is not None and (fix.estimate, fix.low, fix.high) == (1.0, 1.0, 1.0)
    gap = rate_change(revised, stuck, "repeat", seed=0)  # revision - parallel: (0 - 1) - (1 - 1)
    assert gap is not None and gap.estimate == -1.0
    assert rate_change(revised, stuck, "flip", seed=0, side="sequential") is None  # no right answer in ``stuck``
