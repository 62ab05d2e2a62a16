"""Writes ``heldout_arithmetic.jsonl``: the quickstart's skills, phrased as the generator never phrases them.

The quickstart trains and evaluates on ``pipeline.tasks.arithmetic`` (two-digit
addition, one-digit times two-digit, two-step word problems), always worded
"What is a + b?" and with three fixed word-problem stories. A model that only
learned those surfaces would look better on the project's own eval than it
is. This set asks the same skills in other words ("Add 34 and 58.", "Multiply
7 by 46.") and other stories (a library, a garden, a jar of coins, ...), with
operands drawn only from the generator's *eval* split, so no problem here is
ever a training problem. Seeded: running this again writes the same file.

    .venv/bin/python data/heldout_arithmetic.py
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.tasks.arithmetic import split_of  # noqa: E402

OUT = Path(__file__).with_name("heldout_arithmetic.jsonl")
PER_KIND = 66
EVAL_FRACTION = 0.3  # the arithmetic source's default: its eval split

ADD = [
    "Add {a} and {b}.",
    "Compute the sum of {a} and {b}.",
    "{a} plus {b} equals what?",
    "Find the total of {a} and {b}.",
    "If you combine {a} with {b}, what number do you get?",
]
MUL = [
    "Multiply {a} by {b}.",
    "What do you get when you multiply {a} and {b}?",
    "Compute {a} times {b}.",
    "Find the product of {a} and {b}.",
    "What is {b} multiplied by {a}?",
]
# (story, operand sampler, answer): two steps each, stories the generator never tells.
WORD = [
    (
        "A library owns {0} books. It lends out {1} of them and receives {2} new ones as a gift. "
        "How many books does the library hold now?",
        lambda r: (lambda a: (a, r.randint(1, a - 1), r.randint(5, 40)))(r.randint(30, 90)),
        lambda a, b, c: a - b + c,
    ),
    (
        "Ana plants {0} rows of tulips with {1} tulips in each row, and then {2} roses. "
        "How many flowers did she plant?",
        lambda r: (r.randint(2, 9), r.randint(3, 12), r.randint(5, 30)),
        lambda a, b, c: a * b + c,
    ),
    (
        "A jar holds {0} coins. Leo adds {1} coins on Monday and {2} coins on Tuesday. How many coins are in the jar?",
        lambda r: (r.randint(10, 60), r.randint(10, 40), r.randint(10, 40)),
        lambda a, b, c: a + b + c,
    ),
    (
        "A train leaves with {0} passengers. At the first station {1} passengers get off and nobody gets on; "
        "at the second, {2} board. How many passengers are aboard?",
        lambda r: (lambda a: (a, r.randint(1, a - 1), r.randint(1, 30)))(r.randint(20, 80)),
        lambda a, b, c: a - b + c,
    ),
    (
        "Each box holds {1} pencils. A teacher has {0} boxes and {2} loose pencils. "
        "How many pencils does she have in all?",
        lambda r: (r.randint(2, 9), r.randint(4, 12), r.randint(1, 20)),
        lambda a, b, c: a * b + c,
    ),
]


def addition(rng: random.Random, seen: set[str]) -> dict:
    return binary(rng, seen, "add2", ADD, lambda: (rng.randint(10, 99), rng.randint(10, 99)), lambda a, b: a + b)


def multiplication(rng: random.Random, seen: set[str]) -> dict:
    return binary(rng, seen, "mul1x2", MUL, lambda: (rng.randint(2, 9), rng.randint(10, 99)), lambda a, b: a * b)


def binary(rng: random.Random, seen: set[str], kind: str, phrasings: list[str], draw, solve) -> dict:
    """A new two-operand problem of ``kind`` from the generator's eval split, in one of ``phrasings``."""
    while True:
        a, b = draw()
        key = f"{kind}:{min(a, b)},{max(a, b)}"
        if key not in seen and split_of(key, EVAL_FRACTION) == "eval":
            seen.add(key)
            return {"prompt": rng.choice(phrasings).format(a=a, b=b), "answer": solve(a, b), "kind": kind}


def word_problem(rng: random.Random, seen: set[str]) -> dict:
    while True:
        index = rng.randrange(len(WORD))
        text, sample, solve = WORD[index]
        operands = sample(rng)
        key = f"heldout-word:{index}:{operands}"
        if key not in seen:
            seen.add(key)
            return {"prompt": text.format(*operands), "answer": solve(*operands), "kind": "word2"}


def main() -> None:
    rng, seen = random.Random(20261201), set()
    rows = []
    for _ in range(PER_KIND):
        rows += [addition(rng, seen), multiplication(rng, seen), word_problem(rng, seen)]
    OUT.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    print(f"wrote {len(rows)} tasks to {OUT}")


if __name__ == "__main__":
    main()
