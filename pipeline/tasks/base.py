"""Tasks and the registry of task sources.

A task source yields :class:`Task` records with a ``task_id`` that is stable
across runs (it keys rollouts, curation and resume), a ``prompt`` shown to the
model and a ``reference`` the grader understands (a string for numeric and
math answers, a dict for code tasks).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class Task:
    task_id: str
    prompt: str
    reference: Any
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Task:
        return cls(
            task_id=str(data["task_id"]),
            prompt=data["prompt"],
            reference=data["reference"],
            metadata=dict(data.get("metadata") or {}),
        )


class TaskSource(Protocol):
    """Anything that can list its tasks for one split."""

    def load(self, split: str) -> list[Task]: ...


TaskSourceFactory = Callable[..., TaskSource]
_REGISTRY: dict[str, TaskSourceFactory] = {}


def register_task_source(name: str) -> Callable[[TaskSourceFactory], TaskSourceFactory]:
    """Decorator that makes a task source available to ``get_task_source(name)``."""

    def decorate(factory: TaskSourceFactory) -> TaskSourceFactory:
        _REGISTRY[name] = factory
        return factory

    return decorate


def get_task_source(name: str, /, **options: Any) -> TaskSource:
    """The source registered as ``name``, built with its options, else the user's source that ``name`` names
    (:mod:`pipeline.tasks.plugins`: an installed entry point or an import path)."""
    if name in _REGISTRY:
        return _REGISTRY[name](**options)
    from pipeline.tasks.plugins import plugin_task_source  # it builds on this module

    return plugin_task_source(name, options)


def task_source_names() -> list[str]:
    """The built-in task sources' names."""
    return sorted(_REGISTRY)


def iter_limited(tasks: Iterator[Task], limit: int | None) -> list[Task]:
    """Take at most ``limit`` tasks (all when ``limit`` is None)."""
    out: list[Task] = []
    for task in tasks:
        if limit is not None and len(out) >= limit:
            break
        out.append(task)
    return out
