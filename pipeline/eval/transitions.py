"""What happens between one answer and the next: fixed, repeated, flipped, no answer (docs/metrics.md).

``eval.json`` says whether revising beats resampling; these say why not.
One step is a pair of consecutive answers to the same task: turn t and
turn t+1 of a trajectory (the model saw its answer and the feedback), or
first-turn sample j-1 and sample j (independent draws: the baseline a
revision has to beat). Answers compare by their vote key (the grader's
answer key, so ``42`` and ``42.0`` are one answer), never by raw text.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import Enum

from pipeline.eval.metrics import TurnOutcome


class Step(str, Enum):
    """The kind of one step from an answer to the next.

    After a right answer a step is ``keep`` or ``flip`` (wrong, or no
    answer); after a wrong one (no answer counts as wrong) it is ``fix``,
    ``repeat`` (an answer key the same sequence already gave wrongly),
    ``other_wrong`` or ``no_answer``, which partition the steps after a
    wrong answer.
    """

    KEEP = "keep"
    FLIP = "flip"
    FIX = "fix"
    REPEAT = "repeat"
    OTHER_WRONG = "other_wrong"
    NO_ANSWER = "no_answer"


AFTER_RIGHT = (Step.KEEP, Step.FLIP)
AFTER_WRONG = (Step.FIX, Step.REPEAT, Step.OTHER_WRONG, Step.NO_ANSWER)


def steps(answers: Sequence[TurnOutcome]) -> list[Step]:
    """The step from each answer to the next, in order: ``len(answers) - 1`` of them."""
    wrong_keys: set[str] = set()
    found = []
    for previous, current in zip(answers, answers[1:]):
        if not previous.correct and previous.vote_key is not None:
            wrong_keys.add(previous.vote_key)
        found.append(step(previous, current, wrong_keys))
    return found


def step(previous: TurnOutcome, current: TurnOutcome, earlier_wrong_keys: set[str]) -> Step:
    """One step, given the keys of every wrong answer up to and including ``previous``."""
    if previous.correct:
        return Step.KEEP if current.correct else Step.FLIP
    if current.correct:
        return Step.FIX
    if current.vote_key is None:
        return Step.NO_ANSWER
    return Step.REPEAT if current.vote_key in earlier_wrong_keys else Step.OTHER_WRONG
