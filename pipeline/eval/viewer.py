"""``selfimprove view``: every trajectory of one or more evals, turn by turn, in one self-contained HTML file.

The file is for reading what the numbers of ``eval.json`` summarise: each
task's prompt and reference, and for each eval each trajectory's turns (the
response, the answer the grader parsed from it, whether it was right, the
feedback the model was shown next). Two evals of the same tasks sit side by
side (default: the base model against the last iteration). Trajectories
carry outcome labels, from :func:`pipeline.eval.transitions.steps` over the
eval's T turns (a turn an error cut off counts as a wrong abstention, and
answers compare by the grader's classes, as in every metric), so the page
can filter on them:

- ``fixed``: some step went from a wrong answer to a right one;
- ``flipped``: some step went from a right answer to a wrong one (or none);
- ``repeated``: some step repeated a wrong answer the trajectory gave before;
- ``never_right`` / ``always_right``: no turn / every turn right.

Everything is inlined (styles, script, data): the file opens from disk with
no server and no network. Model output is untrusted text: the data sits in a
``<script type="application/json">`` block with ``<``, ``>`` and ``&``
escaped, so ``</script>`` in a response cannot end it, and the page's script
puts text into the page with ``textContent`` only, never as markup. The page
shows :data:`PAGE_SIZE` tasks at a time, so 10,000 trajectories stay usable.
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from pipeline.eval.compare import CompareError, resolve_evals
from pipeline.eval.evaluation import merge_answer_classes, turn_outcome
from pipeline.eval.report import STAGE
from pipeline.eval.transitions import Step, steps
from pipeline.rollouts.records import TrajectoryRecord
from pipeline.run.files import CONFIG_NAME, EVAL_NAME, EVAL_SPEC_NAME, MANIFEST_NAME, ROLLOUTS_NAME, VIEWER_NAME
from pipeline.run.layout import fixed_config_data, stage_path
from pipeline.run.manifest import Manifest
from pipeline.system.atomic import read_json, read_jsonl, write_text_atomic
from rewards import get_grader

TEMPLATE_NAME = "viewer_template.html"
# Tasks per page; the template reads it from the payload, so the two cannot disagree.
PAGE_SIZE = 50
# The outcome labels, in the order the page's filter lists them.
OUTCOMES = ("fixed", "flipped", "repeated", "never_right", "always_right")
_STEP_LABELS = {Step.FIX: "fixed", Step.FLIP: "flipped", Step.REPEAT: "repeated"}


class ViewerError(ValueError):
    """A path that holds no eval to show, or eval files that cannot be read as trajectories."""


@dataclass(frozen=True)
class EvalRecords:
    """One eval to show: its label, its T, and its trajectories as read from ``rollouts.jsonl``."""

    label: str
    turns: int
    records: list[TrajectoryRecord]


def find_evals(path: Path) -> list[EvalRecords]:
    """A run directory's finished evals (iteration order), or an eval directory's one.

    A run's evals are read only when its manifest calls them done and their
    files still match their digests; an eval directory inside a run likewise
    (:func:`pipeline.eval.compare.resolve_evals`). Raises ViewerError for a
    path that is neither, or a run with no finished eval.
    """
    try:
        evals = resolve_evals(path)
    except CompareError as exc:
        raise ViewerError(str(exc)) from None
    if (path / EVAL_NAME).is_file():
        return [_read_records(evals[0].label, evals[0].result.turns, path, _eval_dir_grader(path))]
    if not evals:
        raise ViewerError(f"{path} has no finished eval yet, not even the base model's")
    grader = _run_grader(path)
    return [
        _read_records(
            named.label + (" (base)" if named.result.iteration == 0 else ""),
            named.result.turns,
            stage_path(path, named.result.iteration, STAGE),
            grader,
        )
        for named in evals
    ]


def _read_records(label: str, turns: int, eval_dir: Path, grader: dict[str, Any] | None) -> EvalRecords:
    """An eval's trajectories, their answer keys merged into the grader's classes as the eval's own figures were
    (so "repeated" sees ``\\sqrt{4}`` and ``2`` as one answer under the math grader)."""
    path = eval_dir / ROLLOUTS_NAME
    if not path.is_file():
        raise ViewerError(f"{eval_dir} has no {ROLLOUTS_NAME}: its trajectories are not there to show")
    records = [_record(line) for line in read_jsonl(path, whole=True)]
    if grader is not None:
        try:
            merge_answer_classes(records, get_grader(grader["name"], **grader.get("options", {})).cluster_keys)
        except (KeyError, TypeError, ValueError) as exc:
            raise ViewerError(f"{path}: cannot group its answers with the grader {grader!r}: {exc}") from None
    return EvalRecords(label, turns, records)


def _record(line: dict[str, Any]) -> TrajectoryRecord:
    """A line of an eval's ``rollouts.jsonl`` as its record; a ViewerError naming the trajectory when it is not one."""
    try:
        return TrajectoryRecord.from_dict(line)
    except (KeyError, TypeError) as exc:
        raise ViewerError(f"trajectory {line.get('key', '?')} is not a rollout record (missing {exc})") from None


def _run_grader(run_root: Path) -> dict[str, Any] | None:
    """The ``grader`` section of a run's config (as the run started: an edited config.yaml is refused)."""
    return fixed_config_data(run_root, Manifest.load(run_root)).get("grader")


def _eval_dir_grader(eval_dir: Path) -> dict[str, Any] | None:
    """The grader an eval directory's votes used: a custom eval's ``eval_spec.json``, else its run's config when
    it is a run's ``iter_K/eval``; None for a directory that records neither (keys are used as written)."""
    if (eval_dir / EVAL_SPEC_NAME).is_file():
        return read_json(eval_dir / EVAL_SPEC_NAME).get("grader")
    root = eval_dir.resolve().parent.parent
    return _run_grader(root) if (root / MANIFEST_NAME).is_file() and (root / CONFIG_NAME).is_file() else None


def outcome_labels(record: TrajectoryRecord, turns: int) -> list[str]:
    """The outcome labels (:data:`OUTCOMES`) of one trajectory over the eval's ``turns`` turns."""
    recorded = [turn_outcome(turn.grade) for turn in record.turns[:turns]]
    answers = recorded + [turn_outcome(None)] * (turns - len(recorded))
    found = {_STEP_LABELS[s] for s in steps(answers) if s in _STEP_LABELS}
    if not any(a.correct for a in answers):
        found.add("never_right")
    elif all(a.correct for a in answers):
        found.add("always_right")
    return [label for label in OUTCOMES if label in found]


def build_payload(evals: Sequence[EvalRecords]) -> dict[str, Any]:
    """The page's data: the tasks (first-seen order over every eval), and per eval each task's trajectories.

    ``evals[i].tasks`` maps a task's index in ``tasks`` to its trajectories
    in sample order, so tasks one eval lacks simply have no entry there.
    """
    tasks: list[dict[str, Any]] = []
    index: dict[str, int] = {}
    shown = []
    for ev in evals:
        by_task: dict[int, list[dict[str, Any]]] = {}
        for record in sorted(ev.records, key=lambda r: r.sample):
            task_id = record.task_id
            if task_id not in index:
                index[task_id] = len(tasks)
                tasks.append({"id": task_id, "prompt": record.prompt, "reference": _text(record.reference)})
            by_task.setdefault(index[task_id], []).append(_trajectory(record, ev.turns))
        shown.append({"label": ev.label, "turns": ev.turns, "tasks": by_task})
    return {"page_size": PAGE_SIZE, "outcomes": list(OUTCOMES), "tasks": tasks, "evals": shown}


def _trajectory(record: TrajectoryRecord, turns: int) -> dict[str, Any]:
    """One trajectory as the page shows it: sample, outcome labels, error, and per turn
    the response, parsed answer, correctness and the feedback shown after it."""
    return {
        "sample": record.sample,
        "outcomes": outcome_labels(record, turns),
        "error": record.error,
        "turns": [
            {
                "response": turn.response,
                "parsed": _text(turn.grade.parsed),
                "correct": bool(turn.grade.correct),
                "feedback": turn.feedback,
            }
            for turn in record.turns
        ],
    }


def _text(value: Any) -> str | None:
    """A reference or parsed answer as text (references may be numbers or lists)."""
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


def embed_json(data: Any) -> str:
    """JSON safe inside ``<script type="application/json">``: no ``<``, ``>`` or ``&`` left to end the block."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def render_html(payload: dict[str, Any], title: str) -> str:
    """The viewer page: the template with the title and the payload filled in."""
    template = resources.files("pipeline.eval").joinpath(TEMPLATE_NAME).read_text(encoding="utf-8")
    head, tail = (part.replace("__TITLE__", html.escape(title)) for part in template.split("__PAYLOAD__"))
    return head + embed_json(payload) + tail


def write_viewer(paths: Iterable[Path], out: Path | None = None) -> Path:
    """Write the viewer of every eval found under ``paths`` to ``out`` (default: the first path's ``viewer.html``)."""
    paths = list(paths)
    evals = [ev for path in paths for ev in find_evals(path)]
    target = out if out is not None else paths[0] / VIEWER_NAME
    if target.is_dir():
        raise ViewerError(f"--out {target} is a folder; name the HTML file to write")
    title = "Trajectories: " + ", ".join(path.resolve().name for path in paths)
    write_text_atomic(target, render_html(build_payload(evals), title))
    return target
