"""Procedural arithmetic tasks: seeded, graded by exact integer answers.

Each *kind* is a difficulty level, from two-digit addition to three-step word
problems, so a config can pick tasks near the model's frontier.

Train and eval never share a problem, for any seeds and sizes: a problem's
split is a function of the problem itself (a hash of its canonical key, where
``23 + 45`` and ``45 + 23`` are the same problem), and each split only keeps
the problems that hash into it. Asking for more eval tasks therefore never
changes the train tasks, and vice versa.
"""

from __future__ import annotations

import hashlib
import operator
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pipeline.tasks.base import Task, register_task_source
from pipeline.tasks.rows import DEFAULT_PROMPT_TEMPLATE, check_template, wrap_prompt

SPLITS = ("train", "eval")
# Draws in a row that may find nothing new before a kind counts as exhausted.
_MAX_FRUITLESS_DRAWS = 20_000


@dataclass(frozen=True)
class Problem:
    """One generated problem; ``key`` is its identity for dedup and splitting."""

    kind: str
    question: str
    answer: int
    operands: tuple[int, ...]
    key: str
    template: int | None = None


def _digits(rng: random.Random, n: int) -> int:
    return rng.randint(10 ** (n - 1), 10**n - 1)


Sampler = Callable[[random.Random], int]


def _binary(kind: str, symbol: str, left: Sampler, right: Sampler) -> Callable[[random.Random], Problem]:
    """A commutative ``a <symbol> b`` kind (+ or *); the key ignores operand order."""
    apply = {"+": operator.add, "*": operator.mul}[symbol]

    def generate(rng: random.Random) -> Problem:
        a, b = left(rng), right(rng)
        low, high = sorted((a, b))
        return Problem(kind, f"What is {a} {symbol} {b}?", apply(a, b), (a, b), f"{kind}:{low},{high}")

    return generate


# Word problems: (text with {0}..{n} slots, operand sampler, answer).
WordTemplate = tuple[str, Callable[[random.Random], tuple[int, ...]], Callable[..., int]]


def _rolls(rng: random.Random) -> tuple[int, ...]:
    a, b = rng.randint(10, 60), rng.randint(10, 60)
    return a, b, rng.randint(1, a + b - 1)


def _packs(rng: random.Random) -> tuple[int, ...]:
    return rng.randint(5, 40), rng.randint(2, 9), rng.randint(2, 12)


def _bus(rng: random.Random) -> tuple[int, ...]:
    a = rng.randint(10, 60)
    return a, rng.randint(1, a - 1), rng.randint(1, 30)


def _marbles(rng: random.Random) -> tuple[int, ...]:
    a, b, c = _packs(rng)
    return a, b, c, rng.randint(1, a + b * c - 1)


def _eggs(rng: random.Random) -> tuple[int, ...]:
    a, b, c = rng.randint(2, 12), rng.randint(2, 5), rng.randint(2, 7)
    return a, b, c, rng.randint(1, a * b * c - 1)


def _teams(rng: random.Random) -> tuple[int, ...]:
    teams, size = rng.randint(2, 6), rng.randint(3, 12)
    joined = rng.randint(1, teams * size - 1)
    return teams * size - joined, joined, teams


WORD_TEMPLATES: dict[str, list[WordTemplate]] = {
    "word2": [
        (
            "A baker makes {0} rolls in the morning and {1} in the afternoon. He sells {2} rolls. "
            "How many rolls are left?",
            _rolls,
            lambda a, b, c: a + b - c,
        ),
        (
            "Mia has {0} stickers. She buys {1} packs with {2} stickers in each. How many stickers does she have now?",
            _packs,
            lambda a, b, c: a + b * c,
        ),
        (
            "A bus has {0} people on it. At a stop, {1} people get off and {2} get on. "
            "How many people are on the bus now?",
            _bus,
            lambda a, b, c: a - b + c,
        ),
    ],
    "word3": [
        (
            "Tom has {0} marbles. He buys {1} bags with {2} marbles in each. Then he gives {3} marbles "
            "to his sister. How many marbles does Tom have now?",
            _marbles,
            lambda a, b, c, d: a + b * c - d,
        ),
        (
            "A farm has {0} hens. Each hen lays {1} eggs a day. After {2} days the farmer sells {3} eggs. "
            "How many eggs are left?",
            _eggs,
            lambda a, b, c, d: a * b * c - d,
        ),
        (
            "A class has {0} students. {1} more students join. The teacher splits the class into {2} "
            "equal teams. How many students are in each team?",
            _teams,
            lambda a, b, c: (a + b) // c,
        ),
    ],
}


def _word(kind: str) -> Callable[[random.Random], Problem]:
    def generate(rng: random.Random) -> Problem:
        index = rng.randrange(len(WORD_TEMPLATES[kind]))
        text, sample, solve = WORD_TEMPLATES[kind][index]
        operands = sample(rng)
        key = f"{kind}:{index}:{','.join(map(str, operands))}"
        return Problem(kind, text.format(*operands), solve(*operands), operands, key, index)

    return generate


KINDS: dict[str, Callable[[random.Random], Problem]] = {
    "add2": _binary("add2", "+", lambda r: _digits(r, 2), lambda r: _digits(r, 2)),
    "add3": _binary("add3", "+", lambda r: _digits(r, 3), lambda r: _digits(r, 3)),
    "mul1x2": _binary("mul1x2", "*", lambda r: r.randint(2, 9), lambda r: _digits(r, 2)),
    "mul2x2": _binary("mul2x2", "*", lambda r: _digits(r, 2), lambda r: _digits(r, 2)),
    "word2": _word("word2"),
    "word3": _word("word3"),
}


def split_of(key: str, eval_fraction: float) -> str:
    """The split a problem belongs to, from its key alone (no seed involved)."""
    digest = hashlib.sha256(f"arithmetic:{key}".encode()).digest()
    return "eval" if int.from_bytes(digest[:8], "big") / 2**64 < eval_fraction else "train"


def check_split_options(n_train: int, n_eval: int, eval_fraction: float) -> None:
    """The options of a source that deals its problems into the splits by :func:`split_of`: counts and the share."""
    if not 0 < eval_fraction < 1:
        raise ValueError(f"eval_fraction must be strictly between 0 and 1; got {eval_fraction}")
    if n_train < 0 or n_eval < 0:
        raise ValueError("n_train and n_eval must be non-negative")


@register_task_source("arithmetic")
class ArithmeticTaskSource:
    """Options:

    - ``seed``: the same seed (and options) gives the same tasks in any process.
    - ``kinds``: any of ``add2``, ``add3``, ``mul1x2``, ``mul2x2``, ``word2``,
      ``word3``; tasks are spread evenly over them and interleaved.
    - ``n_train``, ``n_eval``: tasks per split.
    - ``eval_fraction``: the share of each kind's problem space reserved for
      eval. Small spaces limit the counts: ``mul1x2`` has 720 problems, about
      216 of them eval at the default 0.3; asking for more raises an error.
    - ``prompt_template``: wraps the question; must contain ``{question}``.

    ``reference`` is the integer answer as a string; metadata holds ``kind``,
    ``operands`` (in the order shown) and, for word problems, ``template``.
    """

    def __init__(
        self,
        seed: int = 0,
        kinds: Sequence[str] = ("add2", "mul1x2", "word3"),
        n_train: int = 500,
        n_eval: int = 100,
        eval_fraction: float = 0.3,
        prompt_template: str = DEFAULT_PROMPT_TEMPLATE,
    ) -> None:
        unknown = [k for k in kinds if k not in KINDS]
        if unknown or not kinds:
            raise ValueError(f"arithmetic kinds must be a non-empty subset of {sorted(KINDS)}; got {list(kinds)}")
        check_split_options(n_train, n_eval, eval_fraction)
        check_template(prompt_template)
        self.seed = seed
        self.kinds = list(dict.fromkeys(kinds))
        self.sizes = {"train": n_train, "eval": n_eval}
        self.eval_fraction = eval_fraction
        self.prompt_template = prompt_template

    def load(self, split: str) -> list[Task]:
        if split not in SPLITS:
            raise ValueError(f"arithmetic task source has splits {SPLITS}, not {split!r}")
        n, k = self.sizes[split], len(self.kinds)
        per_kind = [self._problems(split, kind, n // k + (i < n % k)) for i, kind in enumerate(self.kinds)]
        rounds = range(max(len(group) for group in per_kind))
        return [self._task(group[i]) for i in rounds for group in per_kind if i < len(group)]

    def _problems(self, split: str, kind: str, count: int) -> list[Problem]:
        """``count`` distinct problems of ``kind`` that belong to ``split``."""
        rng = random.Random(f"arithmetic:{self.seed}:{split}:{kind}")
        found: dict[str, Problem] = {}
        fruitless = 0
        while len(found) < count:
            problem = KINDS[kind](rng)
            if problem.key in found or split_of(problem.key, self.eval_fraction) != split:
                fruitless += 1
                if fruitless > _MAX_FRUITLESS_DRAWS:
                    raise ValueError(
                        f"arithmetic: only {len(found)} distinct {kind!r} problems found for split {split!r}, "
                        f"{count} asked; ask for fewer, add kinds, or change eval_fraction"
                    )
                continue
            fruitless = 0
            found[problem.key] = problem
        return list(found.values())

    def _task(self, problem: Problem) -> Task:
        metadata: dict[str, object] = {"kind": problem.kind, "operands": list(problem.operands)}
        if problem.template is not None:
            metadata["template"] = problem.template
        task_id = "arith-" + problem.key.replace(":", "-").replace(",", "-")
        return Task(task_id, wrap_prompt(problem.question, self.prompt_template), str(problem.answer), metadata)
