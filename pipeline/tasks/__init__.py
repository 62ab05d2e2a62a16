"""Task sources: procedural arithmetic, local JSONL files, Hugging Face datasets, reasoning-gym.

Importing a source module registers it with :func:`get_task_source`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pipeline.tasks import arithmetic, hf, humaneval, jsonl, mbpp, reasoning_gym  # noqa: F401  (registration)
from pipeline.tasks.base import Task, TaskSource, get_task_source, register_task_source, task_source_names

if TYPE_CHECKING:
    from pipeline.config.settings.settings import TaskSourceSection

__all__ = ["Task", "TaskSource", "get_task_source", "load_tasks", "register_task_source", "task_source_names"]


def load_tasks(section: TaskSourceSection, split: str) -> list[Task]:
    """The tasks of one split of a config's task section, cut to its ``limit``."""
    tasks = get_task_source(section.source, **section.options).load(split)
    return tasks[: section.limit] if section.limit else tasks
