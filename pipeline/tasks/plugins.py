"""Task sources from user code (:mod:`rewards.plugins`): an installed entry point or an import path.

A plugin named in ``tasks.*.source`` is either

- a class built with the section's options whose ``load(split)`` returns a
  list of :class:`Task` (the :class:`TaskSource` protocol), or
- a function ``fn(split, **options)`` returning an iterable of tasks: each a
  :class:`Task` or a mapping with ``prompt`` (the text the model sees, as is)
  and ``reference`` (what the grader compares with), and optionally
  ``task_id`` (else a hash of prompt and reference, as the JSONL source makes
  one) and ``metadata``.

A spec that cannot be imported, or a function that cannot take
``(split, **options)``, is a one-line :class:`PluginError` when the source is
built, which the config does when it loads; a bad task, or an exception
while loading, is a ValueError naming the source, split and task.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

from pipeline.tasks.base import Task, TaskSource, task_source_names
from pipeline.tasks.rows import stable_id
from rewards.plugins import TASK_SOURCE, build, check_call, find_plugin, load_plugin, one_line


def load_task_source_plugin(name: str) -> Any:
    """The class or function a source name that is no built-in means; a PluginError saying why there is none."""
    return load_plugin(TASK_SOURCE, name, find_plugin(TASK_SOURCE, name, task_source_names()).spec)


def plugin_task_source(name: str, options: dict[str, Any]) -> TaskSource:
    """The task source that ``name`` names, built with ``options``."""
    target = load_task_source_plugin(name)
    if inspect.isclass(target):
        return build(target, options)
    check_call(TASK_SOURCE, target, options, partial=False)
    return FunctionTaskSource(name, target, options)


class FunctionTaskSource:
    """A task source whose ``load`` is the user's function (module doc)."""

    def __init__(self, name: str, function: Callable[..., Any], options: dict[str, Any]) -> None:
        self.name, self.function, self.options = name, function, dict(options)

    def load(self, split: str) -> list[Task]:
        try:
            items = list(self.function(split, **self.options))
        except Exception as exc:  # the user's code: a failure is this source's error, not a traceback
            raise ValueError(f"{self.name}: loading split {split!r} raised {one_line(exc)}") from None
        tasks = [self._task(split, index, item) for index, item in enumerate(items)]
        seen: set[str] = set()
        for index, task in enumerate(tasks):
            if task.task_id in seen:
                raise ValueError(f"{self.name}: split {split!r}, task {index}: task id {task.task_id!r} used twice")
            seen.add(task.task_id)
        return tasks

    def _task(self, split: str, index: int, item: Any) -> Task:
        if isinstance(item, Task):
            return item
        where = f"{self.name}: split {split!r}, task {index}"
        if not isinstance(item, Mapping):
            raise ValueError(f"{where} is a {type(item).__name__}, not a Task or a mapping")
        prompt, reference = item.get("prompt"), item.get("reference")
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(f"{where}: 'prompt' is missing or not a non-empty string")
        if reference is None:
            raise ValueError(f"{where}: 'reference' is missing")
        task_id = item.get("task_id")
        task_id = str(task_id) if task_id not in (None, "") else stable_id("task", prompt, reference)
        return Task(task_id, prompt, reference, dict(item.get("metadata") or {}))
