"""Code tasks from a JSONL file in MBPP's format (Austin et al., 2021).

Each line is one problem: ``task_id``, ``text`` (the task in words), ``code``
(a reference solution), ``test_list`` (assert statements) and optionally
``test_setup_code``. The task's reference is the row itself with
``entry_point`` added: the function the tests call (what the ``code``
grader needs to find the model's function). The prompt follows the MBPP
paper: the text, then the tests the code should pass (``show_tests``).

``data/mbpp_sample.jsonl`` is a small sample written for this project in
that format (see ``data/README.md``); point ``path`` at the real MBPP file
(``mbpp.jsonl`` from google-research) to use the benchmark. Splits work as
for HumanEval: every split is every row, unless ``eval_fraction`` makes
``train``/``eval`` a seeded partition.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipeline.tasks.base import Task, register_task_source
from pipeline.tasks.humaneval import select_split
from pipeline.tasks.rows import BadRowError, numbered_lines, wrap_prompt
from rewards.code.suite import infer_entry_point

SAMPLE_PATH = Path(__file__).resolve().parents[2] / "data" / "mbpp_sample.jsonl"
DEFAULT_PROMPT_TEMPLATE = "{question}\nReply with the Python function in one ```python code block."


@register_task_source("mbpp_jsonl")
class MbppJsonlSource:
    """Options: ``path`` (default: the shipped sample), ``id_prefix`` (task
    ids are ``<id_prefix>/<task_id>``), ``show_tests`` (put the tests in the
    prompt, as MBPP does), ``prompt_template`` (must contain ``{question}``),
    ``eval_fraction``/``seed`` (train/eval partition) and ``limit``."""

    def __init__(
        self,
        path: str | None = None,
        id_prefix: str = "mbpp",
        show_tests: bool = True,
        prompt_template: str = DEFAULT_PROMPT_TEMPLATE,
        eval_fraction: float | None = None,
        seed: int = 0,
        limit: int | None = None,
    ) -> None:
        wrap_prompt("", prompt_template)  # fail now on a template without a slot
        self.path = Path(path) if path else SAMPLE_PATH
        self.id_prefix = id_prefix
        self.show_tests = show_tests
        self.prompt_template = prompt_template
        self.eval_fraction = eval_fraction
        self.seed = seed
        self.limit = limit

    def load(self, split: str) -> list[Task]:
        tasks = [
            self._task(line, f"{self.path}:{number}") for number, line in numbered_lines(self.path) if line.strip()
        ]
        return select_split(tasks, split, self.eval_fraction, self.seed)[: self.limit]

    def _task(self, line: str, where: str) -> Task:
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise BadRowError(f"{where}: invalid JSON ({exc.msg} at column {exc.colno})") from None
        problem = _check_row(row, where)
        tests = problem["test_list"]
        entry_point = infer_entry_point(problem.get("code") or "", tests)
        if entry_point is None:
            raise BadRowError(f"{where}: cannot tell which function the tests call")
        question = problem["text"].strip()
        if self.show_tests:
            question += "\nYour code should pass these tests:\n\n" + "\n".join(tests)
        return Task(
            task_id=f"{self.id_prefix}/{problem['task_id']}",
            prompt=wrap_prompt(question, self.prompt_template),
            reference={**problem, "entry_point": entry_point},
            metadata={"source": "mbpp_jsonl", "entry_point": entry_point},
        )


def _check_row(row: Any, where: str) -> dict[str, Any]:
    """The row if it has MBPP's required fields, else a BadRowError saying which is wrong."""
    if not isinstance(row, dict):
        raise BadRowError(f"{where}: expected an object, got {type(row).__name__}")
    if row.get("task_id") in (None, ""):
        raise BadRowError(f"{where}: field 'task_id' is missing")
    if not isinstance(row.get("text"), str) or not row["text"].strip():
        raise BadRowError(f"{where}: field 'text' is missing or not a non-empty string")
    tests = row.get("test_list")
    if not isinstance(tests, list) or not tests or not all(isinstance(test, str) for test in tests):
        raise BadRowError(f"{where}: field 'test_list' must be a non-empty list of strings")
    if not isinstance(row.get("test_setup_code", ""), str):
        raise BadRowError(f"{where}: field 'test_setup_code' must be a string")
    return row
