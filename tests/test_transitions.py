"""The step classifier against hand-counted sequences, no-answer turns included."""

from __future__ import annotations

import pytest

from pipeline.eval.metrics import TurnOutcome
from pipeline.eval.transitions import AFTER_RIGHT, AFTER_WRONG, Step, steps

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
