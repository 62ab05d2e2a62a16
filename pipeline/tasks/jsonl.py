"""Tasks from local JSONL files: one file per split, one JSON object per line.

Splits come from separate files (``train_path``, ``eval_path``) rather than a
split column: which rows are held out is then visible from the file names
alone, and no row can silently land in both splits through a typo in a tag.
"""

from __future__ import annotations

import json

from pipeline.tasks.base import Task, register_task_source
from pipeline.tasks.rows import DEFAULT_PROMPT_TEMPLATE, RowMapping, TaskCollector, numbered_lines


@register_task_source("jsonl")
class JsonlTaskSource:
    """Options:

    - ``train_path``, ``eval_path``: the file of each split; either may be
      left out, and loading a split without a file is an error.
    - ``prompt_field`` (default ``prompt``), ``answer_field`` (``answer``):
      which keys hold the question and the reference. Numbers become strings.
    - ``id_field``: a key holding a unique task id. Without it the id is a
      hash of the row's prompt and answer (``<id_prefix>-<16 hex>``), not its
      line number, so that editing one part of a file keeps the other ids.
    - ``answer_extractor``: ``gsm8k`` or ``boxed`` to pull the final answer
      out of a worked solution.
    - ``prompt_template``: wraps the question; must contain ``{question}``.
      Use ``"{question}"`` to pass prompts through unchanged.
    - ``skip_bad_rows``: by default a bad line (invalid JSON, not an object,
      a missing prompt or answer) raises an error naming the file, the line
      and the problem; with True it is skipped with a logged warning.
    - ``limit``: keep at most this many tasks per split (the first ones).

    Blank lines are ignored. Other scalar fields go into task metadata, along
    with ``line`` (1-based).
    """

    def __init__(
        self,
        train_path: str | None = None,
        eval_path: str | None = None,
        prompt_field: str = "prompt",
        answer_field: str = "answer",
        id_field: str | None = None,
        answer_extractor: str | None = None,
        prompt_template: str = DEFAULT_PROMPT_TEMPLATE,
        id_prefix: str = "jsonl",
        skip_bad_rows: bool = False,
        limit: int | None = None,
    ) -> None:
        if train_path is None and eval_path is None:
            raise ValueError("jsonl task source needs train_path and/or eval_path")
        self.paths = {"train": train_path, "eval": eval_path}
        self.mapping = RowMapping(prompt_field, answer_field, id_field, answer_extractor, prompt_template, id_prefix)
        self.skip_bad_rows = skip_bad_rows
        self.limit = limit

    def load(self, split: str) -> list[Task]:
        if split not in self.paths:
            raise ValueError(f"jsonl task source has splits 'train' and 'eval', not {split!r}")
        path = self.paths[split]
        if path is None:
            raise ValueError(f"jsonl task source: no {split}_path configured")
        collector = TaskCollector(self.mapping, self.skip_bad_rows, self.limit)
        for number, line in numbered_lines(path):
            if collector.full:
                break
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                collector.reject(where, f"invalid JSON ({exc.msg} at column {exc.colno})")
                continue
            collector.add(where, row, {"line": number})
        return collector.tasks
