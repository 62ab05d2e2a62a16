"""Invariants of ExIt's learnability buffer, as property tests."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.methods.exit.buffer import BufferError, GroupUpdate, Instance, LearnabilityBuffer, Step, learnability

scores = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)
# Few distinct values, so that ties (and ties with the minimum) are common.
tied_scores = st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0])


def fill(buffer: LearnabilityBuffer, values: list[float]) -> None:
    """Offer one distinct depth-1 instance per score."""
    for i, value in enumerate(values):
        buffer.offer(f"task{i}", [Step(f"attempt {i}", 0.0)], value)


@given(capacity=st.integers(1, 12), values=st.lists(st.one_of(scores, tied_scores), max_size=60))
def test_size_never_exceeds_capacity(capacity: int, values: list[float]) -> None:
    buffer = LearnabilityBuffer(capacity)
    for i, value in enumerate(values):
        buffer.offer(f"task{i}", [Step(str(i), 0.0)], value)
        assert len(buffer) <= capacity


@given(capacity=st.integers(1, 12), values=st.lists(st.one_of(scores, tied_scores), max_size=60))
def test_kept_set_is_the_top_n_by_score(capacity: int, values: list[float]) -> None:
    buffer = LearnabilityBuffer(capacity)
    for i in range(len(values)):
        buffer.offer(f"task{i}", [Step(str(i), 0.0)], values[i])
        expected = sorted(values[: i + 1], reverse=True)[:capacity]
        assert sorted((item.score for item in buffer.items.values()), reverse=True) == expected


@given(capacity=st.integers(1, 8), values=st.lists(tied_scores, min_size=1, max_size=30), newcomer=tied_scores)
def test_eviction_replaces_the_minimum(capacity: int, values: list[float], newcomer: float) -> None:
    buffer = LearnabilityBuffer(capacity)
    fill(buffer, values)
    before = dict(buffer.items)
    weakest = buffer.min_item()
    entered = buffer.offer("newcomer", [Step("new", 0.0)], newcomer)
    if len(before) < capacity:
        assert entered and len(buffer) == len(before) + 1
    elif newcomer >= weakest.score:
        assert entered
        assert set(buffer.items) == (set(before) - {weakest.key}) | {
            next(key for key in buffer.items if key.startswith("newcomer@"))
        }
        # the oldest of equal minima goes first
        assert all(
            item.seq > weakest.seq
            for item in before.values()
            if item.score == weakest.score and item.key != weakest.key
        )
    else:
        assert not entered and buffer.items == before


@given(
    rewards=st.lists(scores, min_size=2, max_size=8),
    depth=st.integers(0, 4),
    seed=st.integers(0, 1000),
)
def test_children_inherit_the_groups_learnability(rewards: list[float], depth: int, seed: int) -> None:
    buffer = LearnabilityBuffer(capacity=4, seed=seed)
    history = tuple(Step(f"h{i}", 0.1 * i) for i in range(depth))
    attempts = [Step(f"a{i}", r) for i, r in enumerate(rewards)]
    update = buffer.add_group(Instance("t", history), attempts, rewards)
    child = update.child
    assert update.entered and child.history[:depth] == history and child.history[-1] in attempts
    assert child.score == pytest.approx(learnability(rewards))
    assert buffer.items[child.key].score == child.score
    # held already; a fresh instance (nothing drawn) re-scores nothing
    assert buffer.add_group(Instance("t", history), [child.history[-1]], rewards) == GroupUpdate(child, False, None)


def test_learnability_is_the_papers_variance() -> None:
    """S is the population variance of the rewards, by hand: mean m, S = sum (r - m)^2 / G."""
    assert learnability([1, 1, 1, 1]) == 0.0
    # m = 1/2, every (r - m)^2 = 1/4: S = 1/4, the maximum for rewards in [0, 1]
    assert learnability([0, 1, 0, 1]) == 0.25
    # m = 1/4: (3 x 1/16 + 9/16) / 4 = 3/16
    assert learnability([0, 0, 0, 1]) == pytest.approx(3 / 16)
    # graded rewards: m = 0.4, (0.04 + 0.04) / 2 = 0.04
    assert learnability([0.2, 0.6]) == pytest.approx(0.04)
    assert learnability([0.5]) == 0.0


@settings(max_examples=10, deadline=None)
@given(values=st.lists(scores, min_size=2, max_size=6), kappa=st.sampled_from([0.5, 1.0, 3.0]))
def test_sampling_frequencies_follow_exp_kappa_s(values: list[float], kappa: float) -> None:
    buffer = LearnabilityBuffer(capacity=len(values), kappa=kappa, seed=7)
    fill(buffer, values)
    draws = 20000
    counts: dict[str, int] = {}
    for _ in range(draws):
        key = buffer.sample().key
        counts[key] = counts.get(key, 0) + 1
    total = sum(math.exp(kappa * item.score) for item in buffer.items.values())
    for key, item in buffer.items.items():
        p = math.exp(kappa * item.score) / total
        sigma = math.sqrt(draws * p * (1 - p))
        assert abs(counts.get(key, 0) - draws * p) <= 5 * sigma + 1


@given(values=st.lists(scores, max_size=20), capacity=st.integers(1, 10), draws=st.integers(0, 5))
def test_save_load_round_trips_exactly(tmp_path_factory, values: list[float], capacity: int, draws: int) -> None:
    buffer = LearnabilityBuffer(capacity, kappa=2.0, seed=3)
    for i, value in enumerate(values):
        buffer.offer(f"task{i % 3}", [Step(f"x{i}", value), Step('y\n"quoted"', 1.0)], value)
    for _ in range(draws if buffer.items else 0):
        buffer.next_instance("fresh", select_prob=0.5, min_items=1, divergence_prob=0.5)
    path = tmp_path_factory.mktemp("buffer") / "buffer.json"
    buffer.save(path)
    loaded = LearnabilityBuffer.load(path)
    assert loaded.to_dict() == buffer.to_dict()
    assert loaded.items == buffer.items
    # the restored RNG continues with exactly the same draws
    for _ in range(5):
        expected = buffer.next_instance("fresh", 0.7, 1, 0.3)
        assert loaded.next_instance("fresh", 0.7, 1, 0.3) == expected


def test_selection_needs_min_items_and_takes_a_prefix() -> None:
    buffer = LearnabilityBuffer(capacity=8, seed=1)
    buffer.offer("deep", [Step("a", 0.0), Step("b", 0.5), Step("c", 1.0)], 1.0)
    assert buffer.next_instance("fresh", select_prob=1.0, min_items=2, divergence_prob=0.0) == Instance("fresh")
    picks = [buffer.next_instance("fresh", select_prob=1.0, min_items=1, divergence_prob=0.0) for _ in range(200)]
    assert {p.task_id for p in picks} == {"deep"} and all(p.from_buffer for p in picks)
    assert {p.depth for p in picks} == {1, 2, 3}
    assert {p.previous_score for p in picks} == {0.0, 0.5, 1.0}
    never = [buffer.next_instance("fresh", select_prob=0.0, min_items=1, divergence_prob=1.0) for _ in range(50)]
    assert never == [Instance("fresh")] * 50


def drawn(buffer: LearnabilityBuffer) -> Instance:
    """An instance drawn from the buffer (select_prob 1, no divergence)."""
    return buffer.next_instance("fresh", select_prob=1.0, min_items=1, divergence_prob=0.0)


def test_a_drawn_item_is_rescored_by_its_new_group() -> None:
    buffer = LearnabilityBuffer(capacity=4, seed=2)
    buffer.offer("a", [Step("a1", 0.0)], 0.25)
    instance = drawn(buffer)
    held = buffer.items[instance.drawn_key]
    update = buffer.add_group(instance, [Step("right", 1.0)] * 4, [1.0, 1.0, 1.0, 0.0])
    assert update.rescored_from == 0.25
    assert buffer.items[held.key].score == pytest.approx(3 / 16) == update.child.score
    assert buffer.items[held.key].seq == held.seq  # it keeps its place in the insertion order


def test_a_solved_instance_stops_being_drawn() -> None:
    """Once the model solves it, its group agrees (S = 0): it becomes the minimum and the next newcomer
    evicts it, where without re-scoring it would keep S = 1/4 and be drawn most."""
    buffer = LearnabilityBuffer(capacity=2, kappa=4.0, seed=0)
    buffer.offer("solved", [Step("s1", 0.0)], 0.25)
    instance = drawn(buffer)
    buffer.offer("other", [Step("o1", 0.0)], 0.1)
    update = buffer.add_group(instance, [Step("right", 1.0)] * 4, [1.0] * 4)
    assert update.rescored_from == 0.25 and buffer.items.get(instance.drawn_key) is None  # evicted by its child
    assert buffer.min_item().score == 0.0 and buffer.min_item().task_id == "solved"
    buffer.offer("newcomer", [Step("n1", 0.0)], 0.05)
    assert {item.task_id for item in buffer.items.values()} == {"other", "newcomer"}


def test_an_item_evicted_since_its_draw_is_not_rescored() -> None:
    buffer = LearnabilityBuffer(capacity=1, seed=0)
    buffer.offer("a", [Step("a1", 0.0)], 0.1)
    instance = drawn(buffer)
    buffer.offer("b", [Step("b1", 0.0)], 0.2)  # evicts a
    update = buffer.add_group(instance, [Step("x", 0.0)] * 2, [0.0, 1.0])
    assert update.rescored_from is None and update.entered  # the child (S 1/4) replaces b (0.2)
    assert [item.task_id for item in buffer.items.values()] == ["a"]


def test_a_format_1_buffer_is_refused_with_the_reason(tmp_path) -> None:
    path = tmp_path / "buffer.json"
    buffer = LearnabilityBuffer(capacity=2)
    path.write_text(json.dumps({**buffer.to_dict(), "format": 1}))
    with pytest.raises(BufferError, match="4 x the variance"):
        LearnabilityBuffer.load(path)


def test_an_unreadable_buffer_file_is_named(tmp_path) -> None:
    path = tmp_path / "buffer.json"
    path.write_text('{"format": 1, "capacity": ')
    with pytest.raises(BufferError, match="buffer.json"):
        LearnabilityBuffer.load(path)
