"""Tasks from Hugging Face datasets: hub names, local data directories, or
datasets saved with ``save_to_disk``.

Presets carry the field mapping and answer extraction of well-known datasets
so that a config can say ``preset: gsm8k`` and nothing else; any option given
explicitly overrides the preset's value.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from pipeline.tasks.base import Task, register_task_source
from pipeline.tasks.rows import DEFAULT_PROMPT_TEMPLATE, RowMapping, TaskCollector

MATH_SUBJECTS = [
    "algebra",
    "counting_and_probability",
    "geometry",
    "intermediate_algebra",
    "number_theory",
    "prealgebra",
    "precalculus",
]

PRESETS: dict[str, dict[str, Any]] = {
    "gsm8k": {
        "dataset": "openai/gsm8k",
        "config": "main",
        "prompt_field": "question",
        "answer_field": "answer",
        "answer_extractor": "gsm8k",
        "train_split": "train",
        "eval_split": "test",
    },
    # The Parquet conversion of MATH (Hendrycks et al. 2021) has one config per
    # subject and no "all" config: the preset reads all seven in order.
    "math": {
        "dataset": "EleutherAI/hendrycks_math",
        "config": MATH_SUBJECTS,
        "prompt_field": "problem",
        "answer_field": "solution",
        "answer_extractor": "boxed",
        "train_split": "train",
        "eval_split": "test",
    },
    # The ``tasks`` config of a run's data export (pipeline/export/dataset.py): prompts are stored as the
    # model saw them and task ids are kept, so a run seeded from another evaluates the same tasks.
    "selfimprove": {
        "config": "tasks",
        "prompt_field": "prompt",
        "answer_field": "reference",
        "id_field": "task_id",
        "prompt_template": "{question}",
        "train_split": "train",
        "eval_split": "eval",
    },
}

# Files that only ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk`` write.
_SAVED_DATASET_MARKERS = ("state.json", "dataset_dict.json")


@dataclass(frozen=True)
class HfOptions:
    """The options of the ``hf`` source after presets are applied.

    ``dataset`` is a hub dataset id or a local directory, the first argument
    of ``datasets.load_dataset`` (not ``name``, which ``get_task_source(name,
    **options)`` takes, nor ``path``, which config validation treats as a local
    file). ``config`` is one config name or a list whose rows are read one
    after another. ``train_split`` and
    ``eval_split`` say which dataset splits the pipeline's "train" and
    "eval" mean; any other split name (``validation``, ``test[:100]``) is
    passed to the dataset as is. ``id_prefix`` defaults to the preset name or
    the last component of ``dataset``. The row options are those of
    :class:`~pipeline.tasks.rows.RowMapping` and
    :class:`~pipeline.tasks.rows.TaskCollector`.
    """

    dataset: str
    config: str | list[str] | None = None
    train_split: str = "train"
    eval_split: str = "test"
    prompt_field: str = "prompt"
    answer_field: str = "answer"
    id_field: str | None = None
    answer_extractor: str | None = None
    prompt_template: str = DEFAULT_PROMPT_TEMPLATE
    id_prefix: str | None = None
    skip_bad_rows: bool = False
    limit: int | None = None
    cache_dir: str | None = None

    @property
    def configs(self) -> list[str | None]:
        return list(self.config) if isinstance(self.config, (list, tuple)) else [self.config]


@register_task_source("hf")
class HfTaskSource:
    """``get_task_source("hf", preset="gsm8k", limit=200)`` and the like."""

    def __init__(self, preset: str | None = None, **options: Any) -> None:
        if preset is not None and preset not in PRESETS:
            raise ValueError(f"unknown hf preset {preset!r}; known presets: {', '.join(sorted(PRESETS))}")
        known = {f.name for f in fields(HfOptions)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ValueError(f"unknown hf task source option(s) {unknown}; known: preset, {', '.join(sorted(known))}")
        merged = {**(PRESETS[preset] if preset is not None else {}), **options}
        if "dataset" not in merged:
            raise ValueError("hf task source needs `dataset` (a hub dataset or a local directory) or a `preset`")
        self.options = HfOptions(**merged)
        o = self.options
        prefix = o.id_prefix or preset or Path(o.dataset.rstrip("/")).name
        self.mapping = RowMapping(
            o.prompt_field, o.answer_field, o.id_field, o.answer_extractor, o.prompt_template, prefix
        )

    def load(self, split: str) -> list[Task]:
        o = self.options
        split_name = {"train": o.train_split, "eval": o.eval_split}.get(split, split)
        collector = TaskCollector(self.mapping, o.skip_bad_rows, o.limit)
        for config in o.configs:
            label = f"{o.dataset}[{config + ':' if config else ''}{split_name}]"
            for index, row in enumerate(self._rows(config, split_name)):
                if collector.full:
                    return collector.tasks
                metadata = {"split": split_name, "row": index} | ({"config": config} if config else {})
                collector.add(f"{label} row {index}", row, metadata)
        return collector.tasks

    def _rows(self, config: str | None, split_name: str) -> Iterable[dict[str, Any]]:
        """The rows of one split, from a saved dataset or through ``load_dataset``."""
        import datasets  # heavy; only paid by runs that use this source

        o = self.options
        local = Path(o.dataset)
        if not any((local / marker).is_file() for marker in _SAVED_DATASET_MARKERS):
            return datasets.load_dataset(o.dataset, config, split=split_name, cache_dir=o.cache_dir)
        if config is not None:
            raise ValueError(f"{o.dataset} is a dataset saved with save_to_disk: it has no configs (got {config!r})")
        saved = datasets.load_from_disk(str(local))
        if not isinstance(saved, datasets.DatasetDict):
            raise ValueError(
                f"{o.dataset} holds a single Dataset without split names; save a DatasetDict "
                f"(e.g. {{'{o.train_split}': ..., '{o.eval_split}': ...}}) so train and eval stay apart"
            )
        if split_name not in saved:
            raise ValueError(f"{o.dataset} has no split {split_name!r}; it has {', '.join(saved)}")
        return saved[split_name]
