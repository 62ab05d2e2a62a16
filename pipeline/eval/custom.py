"""``selfimprove eval RUN -i K --out DIR``: iteration K's model on other tasks or settings, outside the run's plan.

The eval stage's resume reuses whatever trajectory records its folder holds,
matched by ``task_id#sample`` alone. That is right for ``iter_K/eval``,
which only ever holds one eval, but a folder the user names could hold an
eval of another model, other tasks or other settings, and reusing its
records would report one model's answers as another's. So the folder is
claimed: ``eval_spec.json`` records what is evaluated (the model: run,
iteration and the digests of its trained files; the tasks: source, limit,
count and a digest of their content; the settings that shape a trajectory),
written atomically before the first record. A folder is used only when it
is new or empty, or records the same spec (a resume); anything else is
refused before a model is loaded, naming what differs. The folder is locked
(:func:`pipeline.run.lock.run_lock`) so two evals into it cannot interleave,
and a run's own stage folders are never a custom eval's folder.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from pipeline.config.settings import TaskSourceSection, eval_budget_problem, load_split
from pipeline.eval.stage import EvalError, eval_spec, evaluate
from pipeline.rollouts.service import iteration_model
from pipeline.run.files import EVAL_NAME, EVAL_SPEC_NAME, LOCK_NAME
from pipeline.run.layout import TRAIN_STAGE, RunDir
from pipeline.run.lock import run_lock
from pipeline.system.atomic import CorruptFileError, read_json, write_json_atomic
from pipeline.tasks import Task, task_source_names

STAGE_PREFIX = "iter_"


def resolve_eval_tasks(spec: str, limit: int | None = None) -> TaskSourceSection:
    """``--tasks``: a JSONL file (``prompt``/``answer`` fields), or a task source with its defaults: a built-in
    name or, as in a config's ``tasks.*.source``, an installed plugin's name or ``module:attr`` /
    ``path/to/file.py:attr``."""
    path = Path(spec)
    if spec not in task_source_names() and (path.suffix == ".jsonl" or path.exists()):
        if not path.is_file():
            raise EvalError(f"--tasks {spec}: file not found")
        return TaskSourceSection(source="jsonl", options={"eval_path": str(path)}, limit=limit)
    try:
        return TaskSourceSection(source=spec, limit=limit)
    except ValidationError as exc:
        reason = exc.errors()[0]["msg"].removeprefix("Value error, ")
        raise EvalError(f"--tasks {spec!r}: not a .jsonl file, and as a task source: {reason}") from None


def run_custom_eval(
    run: RunDir,
    iteration: int,
    out_dir: Path,
    tasks_spec: str | None = None,
    turns: int | None = None,
    samples: int | None = None,
    limit: int | None = None,
    show_progress: bool = True,
) -> Path:
    """Evaluate iteration ``iteration``'s model on other tasks or settings, into ``out_dir`` (not the manifest).

    Every refusal (the iteration, the folder, a bad task row, another
    eval's folder) comes before a server or model starts.
    """
    check_iteration(run, iteration)
    check_out_dir(run, out_dir)
    turns, samples = turns or run.config.evaluation.turns, samples or run.config.evaluation.samples
    if problem := eval_budget_problem(run.config, turns):
        raise EvalError(f"--turns {turns}: {problem}")
    section = eval_task_section(run, tasks_spec, limit)
    tasks = load_split(section, "eval")
    model = iteration_model(run, iteration)
    spec = custom_eval_spec(run, iteration, section, tasks, turns, samples)
    check_foreign_files(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with run_lock(out_dir):
        claim_out_dir(out_dir, spec)
        evaluate(model, tasks, out_dir, turns, samples, show_progress)
    return out_dir / EVAL_NAME


def check_iteration(run: RunDir, iteration: int) -> None:
    """Refuse an iteration the run does not have, or one whose model its train stage has not finished."""
    last = run.config.run.iterations
    if not 0 <= iteration <= last:
        raise EvalError(f"--iteration {iteration}: the run {run.root} has iterations 0..{last} (0 is the base model)")
    if iteration > 0 and not run.manifest.is_done(iteration, TRAIN_STAGE):
        state = run.manifest.record(iteration, TRAIN_STAGE).state.value
        raise EvalError(
            f"--iteration {iteration}: its model is not trained yet (iter_{iteration}/{TRAIN_STAGE} is {state}); "
            f"`selfimprove resume {run.root}` trains it"
        )


def check_out_dir(run: RunDir, out_dir: Path) -> None:
    """Refuse the run's root and its stage folders (``iter_K/...``, or superseded ones): a stage would take a
    custom eval's records for its own, or a redo would move them away.

    Other folders inside the run directory (``runs/mine/custom-eval``) keep
    a custom eval beside the run it evaluates.
    """
    root, out = run.root.resolve(), out_dir.resolve()
    inside = out.relative_to(root).parts if out.is_relative_to(root) else ()
    if out == root or any(part.startswith(STAGE_PREFIX) for part in inside):
        where = "the run directory" if out == root else f"inside the run's stage folders ({STAGE_PREFIX}*)"
        raise EvalError(f"--out {out_dir} is {where}; name a folder of its own, e.g. {run.root / 'custom-eval'}")
    if out_dir.exists() and not out_dir.is_dir():
        raise EvalError(f"--out {out_dir} is a file, not a folder")


def eval_task_section(run: RunDir, tasks_spec: str | None, limit: int | None) -> TaskSourceSection:
    """``--tasks`` (else the run's eval tasks), cut to ``--limit`` when given."""
    if tasks_spec:
        return resolve_eval_tasks(tasks_spec, limit)
    section = run.config.tasks.eval
    return section.model_copy(update={"limit": limit}) if limit else section


def custom_eval_spec(
    run: RunDir, iteration: int, section: TaskSourceSection, tasks: list[Task], turns: int, samples: int
) -> dict[str, Any]:
    """What a custom eval's records depend on, as JSON reads it back (``eval_spec.json``)."""
    config = run.config
    trajectory = eval_spec(config, None, turns, samples)
    spec = {
        "model": {
            "run": str(run.root.resolve()),
            "iteration": iteration,
            "base": config.model.name_or_path,
            "dtype": config.model.dtype,
            "backend": config.rollout.backend,
            "trained": trained_digest(run, iteration),
        },
        "tasks": {"source": section.source, "limit": section.limit, "count": len(tasks), "digest": tasks_digest(tasks)},
        "settings": {
            "turns": turns,
            "samples": samples,
            "feedback": trajectory.feedback,
            "history_window": trajectory.history_window,
            "sampling": asdict(trajectory.sampling),
            "templates": trajectory.templates.model_dump(mode="json"),
            "seed": trajectory.seed,
            "grader": {"name": config.grader.name, "options": config.grader.options},
        },
    }
    return json.loads(json.dumps(spec, default=str))


def trained_digest(run: RunDir, iteration: int) -> str | None:
    """A digest of the files iteration K's train stage recorded in the manifest; None for the base model (0)."""
    if iteration == 0:
        return None
    outputs = run.manifest.record(iteration, TRAIN_STAGE).outputs
    return hashlib.sha256(json.dumps(outputs, sort_keys=True).encode()).hexdigest()[:16]


def tasks_digest(tasks: list[Task]) -> str:
    """A digest of the tasks' ids, prompts, references and metadata, in order: the same file edited is other tasks."""
    rows = json.dumps([task.to_dict() for task in tasks], sort_keys=True, default=str)
    return hashlib.sha256(rows.encode()).hexdigest()[:16]


def check_foreign_files(out_dir: Path) -> None:
    """Refuse a folder that holds files but no eval spec: whatever they are, they are not this eval's records.

    Checked before the folder's lock is taken, so that refusing someone's
    folder leaves nothing in it.
    """
    if (
        out_dir.is_dir()
        and any(p.name != LOCK_NAME for p in out_dir.iterdir())
        and not (out_dir / EVAL_SPEC_NAME).is_file()
    ):
        raise EvalError(
            f"{out_dir} holds files but no {EVAL_SPEC_NAME}, so not a custom eval's; evaluate into a new folder"
        )


def claim_out_dir(out_dir: Path, spec: dict[str, Any]) -> None:
    """Record ``spec`` in the folder, or accept the same spec recorded there (a resume); refuse another one.

    Called under the folder's lock, so the spec read is the one whose
    records the folder holds.
    """
    path = out_dir / EVAL_SPEC_NAME
    if not path.is_file():
        write_json_atomic(path, spec)
        return
    recorded = read_json(path)
    if not isinstance(recorded, dict):
        raise CorruptFileError(f"{path}: not an eval spec (a JSON object)")
    if differences := spec_differences(recorded, spec):
        raise EvalError(
            f"{out_dir} holds an eval of another model, tasks or settings ({'; '.join(differences)}); "
            "evaluate into a new folder"
        )


def spec_differences(recorded: dict[str, Any], asked: dict[str, Any]) -> list[str]:
    """Each setting that differs, as ``key: recorded there, asked here``."""
    there, here = _flatten(recorded), _flatten(asked)
    keys = [*here, *(key for key in there if key not in here)]
    return [
        f"{key}: {json.dumps(there.get(key))} there, {json.dumps(here.get(key))} asked"
        for key in keys
        if there.get(key) != here.get(key)
    ]


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as dotted keys, so a difference names the one setting that differs."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
