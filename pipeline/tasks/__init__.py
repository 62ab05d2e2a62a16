"""Task sources: procedural arithmetic, local JSONL files, Hugging Face datasets.

Importing a source module registers it with :func:`get_task_source`.
"""

from pipeline.tasks import arithmetic, hf, humaneval, jsonl, mbpp  # noqa: F401  (registration)
from pipeline.tasks.base import Task, TaskSource, get_task_source, register_task_source, task_source_names

__all__ = ["Task", "TaskSource", "get_task_source", "register_task_source", "task_source_names"]
