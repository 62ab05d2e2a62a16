"""``selfimprove export RUN --data``: a run's trajectories and training sets as a Hugging Face dataset.

Every finished stage's JSONL becomes one parquet split, one config per kind
of record, with a dataset card whose ``configs`` metadata lets
``datasets.load_dataset(OUT, "rollouts")`` (or ``load_dataset("parquet",
data_files=...)``) read it::

    OUT/README.md                 the dataset card: configs, splits, schema
    OUT/rollouts/iter_K.parquet   RISE collection trajectories (rollouts.jsonl)
    OUT/curated/iter_K.parquet    RISE weighted SFT examples (curate/train.jsonl)
    OUT/groups/iter_K.parquet     ExIt GRPO groups (train/groups.jsonl)
    OUT/eval/iter_K.parquet       eval trajectories, iter_0 the base model (eval/rollouts.jsonl)
    OUT/tasks/{train,eval}.parquet  each task once: task_id, prompt, reference

Rows are the JSONL records themselves (``datasets`` infers nested structs
and lists), so a split reads back equal to its file; a key some records
lack (an errored ExIt group has no ``scores``) reads back as null. The
``tasks`` config is what the ``hf`` task source's ``selfimprove`` preset
reads, so one run's tasks can seed another with the same task ids.
The folder is built beside ``OUT`` and renamed into place.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.export.model import CARD_NAME, ExportError, building
from pipeline.run.files import GROUPS_NAME, ROLLOUTS_NAME, TRAIN_NAME
from pipeline.run.layout import RunDir, stage_path
from pipeline.system.atomic import read_jsonl, write_text_atomic


@dataclass(frozen=True)
class RecordKind:
    """One config of the exported dataset: which stage file it comes from, and what a row is."""

    config: str
    stage: str
    file: str
    description: str


KINDS = (
    RecordKind(
        "rollouts",
        "rollout",
        ROLLOUTS_NAME,
        "RISE collection trajectories: one row per (task, sample) with every turn's candidates, grades, "
        "chosen response and feedback; the trajectory stops at its first success.",
    ),
    RecordKind(
        "curated",
        "curate",
        TRAIN_NAME,
        "RISE's weighted SFT set: `messages` (the dialogue before the target turn), `completion` (the "
        "target), `reward` and `weight` = exp(reward / tau); accumulated sets repeat earlier iterations' rows.",
    ),
    RecordKind(
        "groups",
        "train",
        GROUPS_NAME,
        "ExIt's GRPO groups: step, the task and depth of the buffered history improved, the scores and "
        "rewards of the group's completions, its learnability and whether the child entered the buffer.",
    ),
    RecordKind(
        "eval",
        "eval",
        ROLLOUTS_NAME,
        "Eval trajectories without oracle: exactly `evaluation.turns` turns each, never stopped early; "
        "iter_0 is the base model.",
    ),
)
TASK_FIELDS = ("task_id", "prompt", "reference")


@dataclass(frozen=True)
class DataSplit:
    """One exported split: its config, split name, the JSONL it comes from and where its parquet goes."""

    config: str
    split: str
    source: Path
    path: str


def data_splits(run: RunDir) -> list[DataSplit]:
    """Every finished stage file of the run as a split, in config then iteration order.

    A done stage whose files no longer match the manifest's digests (a torn,
    edited or duplicated row) raises DamagedOutputError, naming the file:
    an export never drops or keeps a row the stage did not write.
    """
    splits = []
    for kind in KINDS:
        for iteration in range(run.config.run.iterations + 1):
            source = stage_path(run.root, iteration, kind.stage) / kind.file
            if run.manifest.verified_done(iteration, kind.stage, [source]) and source.is_file():
                split = f"iter_{iteration}"
                splits.append(DataSplit(kind.config, split, source, f"{kind.config}/{split}.parquet"))
    return splits


def export_data(run: RunDir, out: Path) -> Path:
    """Write every finished stage's records, the tasks and the dataset card into ``out``; returns ``out``."""
    splits = data_splits(run)
    if not splits:
        raise ExportError(f"{run.root} has no finished stage with records to export yet")
    tables = {(s.config, s.split): read_jsonl(s.source, whole=True) for s in splits}
    tables |= task_tables(tables)
    files = {
        **{(s.config, s.split): s.path for s in splits},
        **{key: f"tasks/{key[1]}.parquet" for key in tables if key[0] == "tasks"},
    }
    with building(out) as staged:
        for config in dict.fromkeys(config for config, _ in tables):
            splits_of = {split: rows for (name, split), rows in tables.items() if name == config}
            for split, dataset in config_datasets(config, splits_of).items():
                (staged / files[(config, split)]).parent.mkdir(parents=True, exist_ok=True)
                dataset.to_parquet(str(staged / files[(config, split)]))
        counts = {key: len(rows) for key, rows in tables.items()}
        write_text_atomic(staged / CARD_NAME, dataset_card(run, files, counts))
    return Path(out)


def config_datasets(config: str, splits: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """One ``datasets.Dataset`` per split, all with the features inferred from every split's rows together.

    ``load_dataset(OUT, config)`` needs one schema for all of a config's
    splits: a field that is null in one split (iteration 0's ``adapter``)
    and a string in another must be typed as a string in both.
    """
    from datasets import Dataset

    try:
        features = Dataset.from_list([row for rows in splits.values() for row in rows]).features
        return {split: Dataset.from_list(rows, features=features) for split, rows in splits.items()}
    except (TypeError, ValueError) as exc:  # pyarrow's type errors derive from these
        raise ExportError(f"{config}: its records do not share one schema: {exc}") from None


def task_tables(tables: dict[tuple[str, str], list[dict[str, Any]]]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """Each task once, first-seen order: ``train`` from the collection rollouts, ``eval`` from the evals."""
    found: dict[str, dict[str, dict[str, Any]]] = {"train": {}, "eval": {}}
    for (config, _), rows in tables.items():
        split = {"rollouts": "train", "eval": "eval"}.get(config)
        if split is None:
            continue
        for row in rows:
            found[split].setdefault(row["task_id"], {field: row[field] for field in TASK_FIELDS})
    return {("tasks", split): list(tasks.values()) for split, tasks in found.items() if tasks}


def dataset_card(run: RunDir, files: dict[tuple[str, str], str], counts: dict[tuple[str, str], int]) -> str:
    """The card: ``configs`` metadata for ``load_dataset``, then each config's splits, row counts and schema."""
    from huggingface_hub import DatasetCard, DatasetCardData

    configs: dict[str, list[dict[str, str]]] = {}
    for (config, split), path in files.items():
        configs.setdefault(config, []).append({"split": split, "path": path})
    data = DatasetCardData(
        tags=["selfimprove", run.config.method.name, "multi-turn", "self-correction"],
        configs=[{"config_name": name, "data_files": entries} for name, entries in configs.items()],
    )
    descriptions = {kind.config: kind.description for kind in KINDS}
    descriptions["tasks"] = (
        "Each task once (`train`: the collection tasks, `eval`: the held-out ones): "
        "`task_id`, `prompt` as the model saw it, `reference` as the grader reads it. "
        "Seed another run with `tasks.train: {source: hf, options: {preset: selfimprove, "
        "dataset: THIS_FOLDER}}`."
    )
    lines = [
        f"# selfimprove run `{run.config.run.name}`: trajectories and training data",
        "",
        f"Method {run.config.method.name}, model `{run.config.model.name_or_path}`, grader "
        f"`{run.config.grader.name}`. Every split is one file of the run directory, row for row "
        "(selfimprove's docs/run-directory.md documents each field).",
        "",
        "```python",
        "from datasets import load_dataset",
        "",
        f'eval_trajectories = load_dataset(PATH, "eval")  # splits {", ".join(s for c, s in files if c == "eval")}',
        "```",
    ]
    for name, entries in configs.items():
        lines += ["", f"## `{name}`", "", descriptions[name], "", "| split | rows | file |", "| --- | ---: | --- |"]
        lines += [f"| {e['split']} | {counts[(name, e['split'])]} | `{e['path']}` |" for e in entries]
    return str(DatasetCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines) + "\n"))
