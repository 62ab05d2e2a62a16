"""The run report: every finished eval stage of a run in one ``report.md`` and three plots.

Reads ``iter_K/eval/eval.json`` and ``curves.json`` (written by
:mod:`pipeline.eval.stage`) for each iteration whose eval stage the manifest
calls done, so a run in progress gets a report of what exists and a half
written eval is never shown; their files must still match the manifest's
digests (:class:`pipeline.run.manifest.DamagedOutputError` names one that
does not). Writes, each atomically, into the run directory:

- ``report.md``: a header (run, model, method, tasks, eval settings), a
  table per iteration and a line comparing it with the base model;
- ``accuracy_by_turn.png``: pass@1 at each turn, one line per iteration;
  for ExIt runs by improvement step (turn t is step t - 1), with each
  iteration's mean training depth marked (from its ``train_summary.json``),
  to show how far beyond the depths it trained on the model keeps improving;
- ``sequential_vs_parallel.png``: at equal samples k, without an oracle
  m1@tk (the vote over k turns of one trajectory) against mk@t1 (the vote
  over k parallel first-turn answers), and with an oracle p1@tk against
  pk@t1 (any of them correct); one panel each, one colour per iteration;
- ``transitions.png``: per iteration, the share of each kind of step from
  one answer to the next (:mod:`pipeline.eval.transitions`), revision beside
  the parallel samples; ``report.md`` has their rates in a table. An eval
  written before they existed gets them from its records.

Differences carry their paired bootstrap 95 % interval over tasks
(:mod:`pipeline.eval.intervals`), printed as ``+1.5 pp [-0.8, +3.9]`` and marked
"not distinguishable" when the interval holds 0. An eval written before
those figures existed shows ``n/a`` for them.

Levels (accuracies) print as percentages of tasks, changes as percentage
points, one decimal each. A run with no finished eval has nothing to report:
:func:`write_report` raises :class:`ReportError` rather than writing an empty
page that could be mistaken for a result.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from rich.table import Table

from pipeline.config.methods import METHODS, method_section
from pipeline.config.settings import ConfigError
from pipeline.eval.evaluation import (
    compare_task_metrics,
    headline_keys,
    prepare_eval_records,
    revision_gaps,
    task_metrics,
)
from pipeline.eval.intervals import Interval, format_difference
from pipeline.eval.transitions import SIDES, Step, summarize_transitions
from pipeline.rollouts.records import TrajectoryRecord
from pipeline.run.files import (
    ACCURACY_PLOT,
    CONFIG_NAME,
    CURVES_NAME,
    CURVES_PLOT,
    EVAL_NAME,
    PARALLEL_DIR,
    REPORT_NAME,
    ROLLOUTS_NAME,
    TASK_METRICS_NAME,
    TRAIN_SUMMARY_NAME,
    TRANSITIONS_PLOT,
)
from pipeline.run.layout import TRAIN_STAGE, RunDirError, fixed_config_data, stage_path
from pipeline.run.manifest import Manifest, parse_stage_key
from pipeline.system.atomic import read_json, read_jsonl, write_bytes_atomic, write_text_atomic
from rewards import get_grader
from rewards.base import ExactKeys

# The eval stage's name. Spelled here, not imported from pipeline.eval.stage,
# because that stage imports this module to rewrite the report after every eval.
STAGE = "eval"
# The keys of config.yaml the report reads.
REPORTED_KEYS = (
    "run.name",
    "run.iterations",
    "model.name_or_path",
    "method.name",
    "tasks.train.source",
    "tasks.eval.source",
    "evaluation.feedback",
)
RATE_NAMES = {"fix": "fix", "repeat": "repeat", "flip": "flip", "no_answer": "no answer"}


Cluster = Callable[[Sequence[str]], Mapping[str, str]]
"""A grader's ``cluster_keys``: one task's answer keys -> their equivalence classes."""


class ReportError(RuntimeError):
    """A run with nothing to report yet, or whose eval files are missing or disagree."""


@dataclass(frozen=True)
class IterationEval:
    """One finished eval stage: iteration K's ``eval.json``, ``curves.json`` and per-task figures
    (``task_rows``; None for an eval written before they existed)."""

    iteration: int
    summary: dict[str, Any]
    curves: dict[str, Any]
    task_rows: list[dict[str, Any]] | None = None

    @property
    def turns(self) -> int:
        return self.summary["turns"]

    @property
    def sequential(self) -> float:
        """m1@tT: the vote over the T turns of one trajectory."""
        return self.summary[f"m1@t{self.turns}"]

    @property
    def parallel(self) -> float | None:
        """mT@t1: the vote over T parallel first-turn answers (None when not measured)."""
        return self.summary[f"m{self.turns}@t1"]

    @property
    def label(self) -> str:
        return "base" if self.iteration == 0 else f"iteration {self.iteration}"

    @property
    def seed(self) -> int:
        return int(self.summary.get("bootstrap_seed", 0))

    @property
    def transitions(self) -> dict[str, Any] | None:
        """The transition rates (:func:`pipeline.eval.transitions.summarize_transitions`); None without records."""
        return self.summary.get("transitions")

    def change_from(self, base: IterationEval, key: str) -> Interval | None:
        """This eval's ``key`` minus the base's, paired over tasks (None without both evals' task figures)."""
        if self.task_rows is None or base.task_rows is None:
            return None
        return compare_task_metrics(self.task_rows, base.task_rows, key, self.seed)


def collect_evals(run_root: str | Path) -> list[IterationEval]:
    """The run's finished evals in iteration order; iterations whose eval stage is not done are left out.

    Raises DamagedOutputError when a done stage's files no longer match
    their digests (the run directory was damaged), and ReportError when the
    evals disagree on turns or samples, which one table cannot line up.
    """
    run_root = Path(run_root)
    manifest = Manifest.load(run_root)
    planned = sorted(k for k, stage in map(parse_stage_key, manifest.stages) if stage == STAGE)
    evals = [
        read_eval_dir(stage_path(run_root, k, STAGE), k, lambda: _run_cluster(run_root, manifest))
        for k in planned
        if manifest.verified_done(k, STAGE)
    ]
    settings = {(e.summary["turns"], e.summary["samples"]) for e in evals}
    if len(settings) > 1:
        found = ", ".join(f"{e.label}: T={e.summary['turns']}, n={e.summary['samples']}" for e in evals)
        raise ReportError(f"{run_root}: the evals differ in turns or samples ({found}); they cannot share a report")
    return evals


def _run_cluster(run_root: Path, manifest: Manifest) -> Cluster:
    """The run's grader's ``cluster_keys``, to merge answer keys as its eval stage did."""
    try:
        grader = fixed_config_data(run_root, manifest).get("grader", {})
        return get_grader(grader.get("name", "numeric"), **grader.get("options", {})).cluster_keys
    except (RunDirError, ConfigError, ValueError, TypeError) as exc:
        raise ReportError(f"{run_root}: cannot build the run's grader to recount transitions ({exc})") from None


def _read_run_config(run_root: Path) -> dict[str, Any]:
    """The run's resolved ``config.yaml`` as plain data; one that is unreadable, was edited since the run started
    or lacks a key the report reads (:data:`REPORTED_KEYS`) is a ReportError naming it.

    Not validated through :func:`pipeline.config.settings.load_config`: that checks task
    files exist, and a report must not fail because a data file moved after
    the run.
    """
    path = run_root / CONFIG_NAME
    if not path.is_file():
        raise ReportError(f"{run_root} is not a run directory (no {CONFIG_NAME})")
    try:
        config = fixed_config_data(run_root, Manifest.load(run_root))
    except (RunDirError, ConfigError) as exc:
        raise ReportError(str(exc)) from None
    if missing := next((key for key in REPORTED_KEYS if not _has_key(config, key)), None):
        raise ReportError(f"{path} is not a run config: it has no {missing}")
    return config


def _has_key(config: Any, dotted: str) -> bool:
    """Whether ``config`` holds the nested key ``a.b.c``."""
    for part in dotted.split("."):
        if not isinstance(config, dict) or part not in config:
            return False
        config = config[part]
    return True


def write_report(run_root: str | Path, evals: Sequence[IterationEval] | None = None) -> Path:
    """Write ``report.md`` and its three plots into the run directory; returns the report's path.

    ``evals`` are the run's :func:`collect_evals`, for a caller that also
    prints them (reading them checks digests and may recount transitions);
    None reads them here. Every file is replaced atomically, so a rerun (e.g.
    after another iteration finished) leaves either the old or the new
    version, never a mix. Raises ReportError, writing nothing, when no eval
    is done yet.
    """
    run_root = Path(run_root)
    evals = collect_evals(run_root) if evals is None else evals
    text = render_markdown(_read_run_config(run_root), evals)
    write_bytes_atomic(run_root / ACCURACY_PLOT, png_bytes(_accuracy_by_turn(evals, training_depths(run_root, evals))))
    write_bytes_atomic(run_root / CURVES_PLOT, png_bytes(_sequential_vs_parallel(evals)))
    write_bytes_atomic(run_root / TRANSITIONS_PLOT, png_bytes(_transitions_plot(evals)))
    path = run_root / REPORT_NAME
    write_text_atomic(path, text)
    return path


def render_markdown(config: dict[str, Any], evals: Sequence[IterationEval]) -> str:
    """The text of ``report.md`` for a run config and its finished evals (plots linked by relative path)."""
    _require(evals)
    base = _base(evals)
    lines = [f"# Run report: {config['run']['name']}", "", *_header(config, evals), ""]
    lines.append("Accuracies are percentages of tasks; changes are percentage points (pp).")
    for ev in evals:
        heading = f"Iteration {ev.iteration}" + (" (base model)" if ev.iteration == 0 else "")
        lines += ["", f"## {heading}", "", "| metric | value |", "| --- | ---: |"]
        lines += [f"| {name} | {value} |" for name, value in metric_rows(ev.summary)]
        lines += ["", _comparison_line(ev, base)]
    lines += ["", *_transitions_section(evals)]
    lines += [
        "",
        "## Plots",
        "",
        f"![pass@1 by turn, one line per iteration]({ACCURACY_PLOT})",
        "",
        f"![sequential against parallel at equal samples k: m1@tk vs mk@t1, and with an oracle p1@tk vs pk@t1]({CURVES_PLOT})",
        "",
        f"![what follows each answer, turn by turn, revision against parallel samples]({TRANSITIONS_PLOT})",
        "",
        "Every trajectory turn by turn, by outcome: `selfimprove view` on this run writes [viewer.html](viewer.html).",
        "",
    ]
    return "\n".join(lines)


def _transitions_section(evals: Sequence[IterationEval]) -> list[str]:
    """Why revision does or does not beat resampling: the transition rates, one column per eval."""
    lines = [
        "## Transitions",
        "",
        "What follows an answer: the next turn of the trajectory (revision), against the next parallel first-turn "
        "sample of the task (resampling). fix: right after a wrong answer; repeat: a wrong answer given before "
        "(same answer key) after a wrong one; flip: wrong after a right answer; no answer: none after a wrong one. "
        "Each cell: revision / parallel, then revision minus parallel with its paired 95 % interval over tasks.",
        "",
        "| transition | " + " | ".join(ev.label for ev in evals) + " |",
        "| --- |" + " ---: |" * len(evals),
    ]
    columns = [transition_rows(ev) for ev in evals]
    lines += [
        f"| {name} | " + " | ".join(rows[i][1] for rows in columns) + " |" for i, (name, _) in enumerate(columns[0])
    ]
    return lines


def transition_rows(ev: IterationEval, all_turns_only: bool = False) -> list[tuple[str, str]]:
    """(rate and turns, ``revision / parallel (difference [interval])``) of one eval; ``n/a`` without its records."""
    groups = [(f"t{t}->t{t + 1}", t - 1) for t in range(1, ev.turns)] + [("all turns", None)]
    if all_turns_only:
        groups = groups[-1:]
    found = ev.transitions
    rows = []
    for rate, name in RATE_NAMES.items():
        for label, index in groups:
            if found is None:
                rows.append((f"{name}, {label}", "n/a"))
                continue
            group = found["all_turns"] if index is None else found["per_turn"][index]
            rows.append((f"{name}, {label}", _transition_cell(group, rate)))
    return rows


def _transition_cell(group: Mapping[str, Any], rate: str) -> str:
    """``66.8% / 30.0% (+36.8 pp [+30.1, +43.0])``: revision, parallel, and their difference."""
    values = [group[side][rate] for side in SIDES]
    text = " / ".join("n/a" if v is None else percent(v["estimate"]) for v in values)
    difference = group["difference"][rate]
    return text if difference is None else f"{text} ({format_difference(Interval.from_dict(difference))})"


def report_table(evals: Sequence[IterationEval]) -> Table:
    """The report's numbers with one column per iteration, for the CLI to print at the end of a run."""
    _require(evals)
    base = _base(evals)
    turns = evals[0].turns
    table = Table(title=f"Evaluation by iteration: {evals[0].summary['samples']} samples, {turns} turns, no oracle")
    table.add_column("metric")
    for ev in evals:
        table.add_column(ev.label, justify="right")
    columns = [metric_rows(ev.summary) for ev in evals]
    for index, (name, _) in enumerate(columns[0]):
        table.add_row(name, *(rows[index][1] for rows in columns))
    table.add_row(f"m1@t{turns} vs base", *(_change_cell(ev, base) for ev in evals))
    table.add_row(f"m1@t{turns} >= m{turns}@t1", *(_yes_no(sequential_beats_parallel(ev)) for ev in evals))
    table.add_row(f"p1@t{turns} >= p{turns}@t1", *(_yes_no(oracle_sequential_beats_parallel(ev)) for ev in evals))
    columns = [transition_rows(ev, all_turns_only=True) for ev in evals]
    for index, (name, _) in enumerate(columns[0]):
        table.add_row(f"{name}: revision / parallel", *(rows[index][1] for rows in columns))
    return table


def metric_rows(summary: dict[str, Any]) -> list[tuple[str, str]]:
    """(metric, formatted value) of one eval summary, in the order both the markdown and the CLI table show.

    Per-turn pass@1 carries its interval, the two sequential-minus-parallel
    gaps theirs; figures an older eval lacks read ``n/a``.
    """
    turns = summary["turns"]
    intervals = summary.get("intervals", {})
    rows = [
        (
            f"pass@1 turn {row['turn']}",
            _with_interval(percent(row["pass@1"]), intervals.get(f"pass@1 turn {row['turn']}")),
        )
        for row in summary["per_turn"]
    ]
    rows += [(key, percent(summary.get(key))) for key in headline_keys(turns)[turns:-2]]
    for name in revision_gaps(turns):
        gap = intervals.get(name)
        rows.append((name, "n/a" if gap is None else format_difference(Interval.from_dict(gap))))
    rows += [(key, points(summary[key])) for key in ("delta_t1_tT", "delta_i_to_c", "delta_c_to_i")]
    rows.append(("tasks", str(summary["n_tasks"])))
    incomplete = summary.get("incomplete")
    rows.append(
        (
            "incomplete trajectories",
            "n/a" if incomplete is None else f"{incomplete} (+{summary.get('incomplete_parallel', 0)} parallel)",
        )
    )
    rows.append(("grading errors", str(summary.get("grading_errors", "n/a"))))
    return rows


def _with_interval(value: str, interval: dict[str, float] | None) -> str:
    """``23.5% [17.5, 29.5]``: a level with its bootstrap interval, in percent."""
    if interval is None:
        return value
    return f"{value} [{100 * interval['low']:.1f}, {100 * interval['high']:.1f}]"


def sequential_beats_parallel(ev: IterationEval) -> bool | None:
    """m1@tT >= mT@t1: T sequential turns do at least as well as T parallel samples (None: mT@t1 unknown)."""
    return None if ev.parallel is None else ev.sequential >= ev.parallel


def oracle_sequential_beats_parallel(ev: IterationEval) -> bool | None:
    """p1@tT >= pT@t1: with an oracle, revising T times does at least as well as T fresh answers (None: unmeasured)."""
    parallel = ev.summary.get(f"p{ev.turns}@t1")
    return None if parallel is None else ev.summary[f"p1@t{ev.turns}"] >= parallel


def percent(value: float | None) -> str:
    """A share as ``23.5%``; ``n/a`` when it was not measured."""
    return "n/a" if value is None else f"{100 * value:.1f}%"


def points(value: float | None) -> str:
    """A change of shares as signed percentage points, ``+4.2 pp``; ``n/a`` when unknown."""
    return "n/a" if value is None else f"{100 * value:+.1f} pp"


def read_eval_dir(
    eval_dir: Path, iteration: int, cluster: Callable[[], Cluster] = lambda: ExactKeys().cluster_keys
) -> IterationEval:
    """An eval directory's summary, curves and (when written) per-task figures.

    An ``eval.json`` written before transition rates existed gets them, in
    memory, from the eval's records (``cluster`` gives the grader's answer
    classes; without a run, keys count as they are).
    """
    summary, curves = (_read_json(eval_dir / name) for name in (EVAL_NAME, CURVES_NAME))
    rows_path = eval_dir / TASK_METRICS_NAME
    rows = read_jsonl(rows_path, whole=True) if rows_path.is_file() else None
    if "transitions" not in summary and (eval_dir / ROLLOUTS_NAME).is_file():
        summary, rows = _with_transitions(eval_dir, summary, rows, cluster())
    return IterationEval(iteration, summary, curves, rows)


def _with_transitions(
    eval_dir: Path, summary: dict[str, Any], rows: list[dict[str, Any]] | None, cluster: Cluster
) -> tuple[dict[str, Any], list[dict[str, Any]] | None]:
    """The summary with its transition rates and the task rows with their step counts, recounted from the records."""
    turns, samples = summary["turns"], summary["samples"]
    lines = read_jsonl(eval_dir / ROLLOUTS_NAME, whole=True)
    parallel_path = eval_dir / PARALLEL_DIR / ROLLOUTS_NAME
    parallel_lines = read_jsonl(parallel_path, whole=True) if parallel_path.is_file() else None
    try:
        records = [TrajectoryRecord.from_dict(line) for line in lines]
        parallel = None if parallel_lines is None else [TrajectoryRecord.from_dict(line) for line in parallel_lines]
        first_turn = prepare_eval_records(records, parallel, turns, samples, cluster)
        steps = {row["task_id"]: row["steps"] for row in task_metrics(records, turns, samples, first_turn)}
    except (KeyError, ValueError) as exc:
        raise ReportError(f"{eval_dir}: cannot recount transitions from {ROLLOUTS_NAME} ({exc})") from None
    seed = int(summary.get("bootstrap_seed", 0))
    summary = {**summary, "transitions": summarize_transitions(list(steps.values()), turns, seed)}
    if rows is not None:
        rows = [{**row, "steps": steps[row["task_id"]]} if row["task_id"] in steps else row for row in rows]
    return summary, rows


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ReportError(f"the manifest says this eval is done, but {path} is missing")
    return read_json(path)


def _require(evals: Sequence[IterationEval]) -> None:
    if not evals:
        raise ReportError("nothing to report: no eval stage is done yet, not even the base model's")


def _base(evals: Sequence[IterationEval]) -> IterationEval | None:
    return evals[0] if evals[0].iteration == 0 else None


def _header(config: dict[str, Any], evals: Sequence[IterationEval]) -> list[str]:
    first = evals[0].summary
    iterations = config["run"]["iterations"]
    done = [ev.iteration for ev in evals]
    pending = [k for k in range(iterations + 1) if k not in done]
    progress = f"iterations {', '.join(map(str, done))} of 0..{iterations}"
    if pending:
        progress += f" (not evaluated yet: {', '.join(map(str, pending))})"
    tasks = config["tasks"]
    return [
        f"- model: `{config['model']['name_or_path']}`",
        f"- method: {_describe_method(config['method'])}",
        f"- tasks: train {_describe_tasks(tasks['train'])}; eval {_describe_tasks(tasks['eval'])}",
        f"- evaluation: {first['n_tasks']} tasks, {first['turns']} turns, {first['samples']} samples per task, "
        f"feedback `{config['evaluation']['feedback']}` (no oracle)",
        f"- evaluated: {progress}",
    ]


def _describe_method(method: dict[str, Any]) -> str:
    settings = [f"{key} {method[key]}" for key in _reported_settings(method["name"]) if key in method]
    return f"{method['name']} ({', '.join(settings)})" if settings else method["name"]


def _reported_settings(name: str) -> tuple[str, ...]:
    """The settings the method's section names as worth the header; none for a method this version does not know."""
    return method_section(name).REPORTED if name in METHODS else ()


def _describe_tasks(section: dict[str, Any]) -> str:
    details = [f"{key}={value}" for key, value in section.get("options", {}).items()]
    if section.get("limit") is not None:
        details.append(f"limit={section['limit']}")
    return f"`{section['source']}` ({', '.join(details)})" if details else f"`{section['source']}`"


def _comparison_line(ev: IterationEval, base: IterationEval | None) -> str:
    """One sentence: m1@tT against the base model's, and sequential against parallel at equal samples."""
    seq = f"m1@t{ev.turns}"
    if ev.iteration == 0:
        opening = f"Base model: {seq} {percent(ev.sequential)}"
    elif base is None:
        opening = f"Iteration {ev.iteration}: {seq} {percent(ev.sequential)} (no base model eval to compare with)"
    else:
        change = f"{_change_cell(ev, base)} from {percent(base.sequential)}"
        opening = f"Iteration {ev.iteration} vs base: {seq} {percent(ev.sequential)}, {change}"
    return f"{opening}; sequential beats parallel at equal samples: {_verdict(ev, 'm')}; with an oracle: {_verdict(ev, 'p')}."


def _verdict(ev: IterationEval, kind: str) -> str:
    """``yes (m1@t3 35.0% >= m3@t1 30.0%, +5.0 pp [...])``: sequential against parallel, majority ('m') or oracle ('p')."""
    turns = ev.turns
    seq_key, par_key = f"{kind}1@t{turns}", f"{kind}{turns}@t1"
    seq, par = ev.summary.get(seq_key), ev.summary.get(par_key)
    if par is None:
        return f"n/a ({par_key} was not measured)"
    relation = ">=" if seq >= par else "<"
    gap = ev.summary.get("intervals", {}).get(f"{seq_key}-{par_key}")
    detail = "" if gap is None else f", {format_difference(Interval.from_dict(gap))}"
    return f"{_yes_no(seq >= par)} ({seq_key} {percent(seq)} {relation} {par_key} {percent(par)}{detail})"


def _change_cell(ev: IterationEval, base: IterationEval | None) -> str:
    """m1@tT's change from the base model with its paired interval when both evals have task figures;
    ``n/a`` without a base eval (and ``-`` for the base itself)."""
    if ev.iteration == 0:
        return "-"
    if base is None:
        return "n/a"
    change = ev.change_from(base, f"m1@t{ev.turns}")
    return points(ev.sequential - base.sequential) if change is None else format_difference(change)


def _yes_no(value: bool | None) -> str:
    return "n/a" if value is None else ("yes" if value else "no")


def training_depths(run_root: Path, evals: Sequence[IterationEval]) -> dict[int, float]:
    """Iteration -> the mean depth of the histories it trained on (ExIt's train summaries; empty for RISE)."""
    manifest = Manifest.load(run_root)
    depths = {}
    for ev in evals:
        path = stage_path(run_root, ev.iteration, TRAIN_STAGE) / TRAIN_SUMMARY_NAME
        if ev.iteration == 0 or not manifest.verified_done(ev.iteration, TRAIN_STAGE, [path]):
            continue
        if (depth := _read_json(path).get("mean_depth")) is not None:
            depths[ev.iteration] = float(depth)
    return depths


def _accuracy_by_turn(evals: Sequence[IterationEval], depths: dict[int, float]) -> Figure:
    """pass@1 by turn; with training depths (ExIt) by improvement step, each mean depth a dotted line."""
    if depths:
        figure, axes = _figure("pass@1 by improvement step", "improvement step (0: first answer)", "pass@1 (%)")
    else:
        figure, axes = _figure("pass@1 by turn", "turn", "pass@1 (%)")
    offset = 1 if depths else 0
    for index, ev in enumerate(evals):
        color = f"C{index % 10}"
        xs = [row["turn"] - offset for row in ev.summary["per_turn"]]
        axes.plot(xs, [100 * row["pass@1"] for row in ev.summary["per_turn"]], marker="o", color=color, label=ev.label)
        axes.set_xticks(xs)
        if ev.iteration in depths:
            depth = depths[ev.iteration]
            axes.axvline(depth, color=color, linestyle=":", label=f"{ev.label}: mean training depth {depth:.2f}")
    axes.legend()
    return figure


def _sequential_vs_parallel(evals: Sequence[IterationEval]) -> Figure:
    """Two panels at equal samples k: majority votes (m1@tk vs mk@t1) and oracle (p1@tk vs pk@t1).

    Solid: sequential (k turns of one trajectory); dashed: parallel (k
    first-turn answers); one colour per iteration. Unmeasured (null) points,
    and the oracle panel of evals written before it existed, are left out.
    """
    figure = Figure(figsize=(11, 4.5), layout="constrained")
    panels = figure.subplots(1, 2, sharey=True)
    titles = ("Without oracle: majority vote", "With oracle: any answer correct")
    pairs = (
        (("sequential", "m1@tk"), ("parallel", "mk@t1")),
        (("sequential_oracle", "p1@tk"), ("parallel_oracle", "pk@t1")),
    )
    for axes, title, pair in zip(panels, titles, pairs):
        axes.set(title=title, xlabel="k (turns, or parallel first-turn samples)", ylabel="accuracy (%)")
        axes.grid(alpha=0.3)
        for index, ev in enumerate(evals):
            for (key, name), style in zip(pair, ("-o", "--s")):
                ks, values = _known_points(ev.curves["k"], ev.curves.get(key, [None] * len(ev.curves["k"])))
                if ks:
                    axes.plot(ks, values, style, color=f"C{index % 10}", label=f"{ev.label}: {name}")
            axes.set_xticks(ev.curves["k"])
        if axes.get_legend_handles_labels()[0]:
            axes.legend()
    return figure


STEP_COLOURS = {
    Step.KEEP: ("right -> right", "tab:green"),
    Step.FLIP: ("right -> wrong", "tab:red"),
    Step.FIX: ("wrong -> right", "tab:blue"),
    Step.REPEAT: ("wrong -> same wrong", "tab:orange"),
    Step.OTHER_WRONG: ("wrong -> other wrong", "tab:purple"),
    Step.NO_ANSWER: ("wrong -> no answer", "tab:gray"),
}


def _transitions_plot(evals: Sequence[IterationEval]) -> Figure:
    """One panel per eval: at each step t -> t+1, the share of each kind of step, revision beside parallel.

    Stacked bars (``R``: turn t to t+1 of the trajectories; ``P``: parallel
    sample t to t+1); an eval without its records has an empty panel.
    """
    figure = Figure(figsize=(4 + 3 * len(evals), 4.5), layout="constrained")
    panels = figure.subplots(1, len(evals), sharey=True, squeeze=False)[0]
    for axes, ev in zip(panels, evals):
        axes.set(title=ev.label, ylabel="share of steps (%)")
        counts = ev.transitions["steps"] if ev.transitions else {side: [] for side in SIDES}
        labels, bars = [], []
        for position in range(len(counts["sequential"])):
            for side, letter in zip(SIDES, "RP"):
                labels.append(f"{letter} t{position + 1}->{position + 2}")
                bars.append(counts[side][position])
        bottoms = [0.0] * len(bars)
        for kind, (name, colour) in STEP_COLOURS.items():
            shares = [100 * bar[kind.value] / max(1, sum(bar.values())) for bar in bars]
            axes.bar(range(len(bars)), shares, bottom=bottoms, color=colour, label=name)
            bottoms = [b + share for b, share in zip(bottoms, shares)]
        axes.set_xticks(range(len(bars)), labels, rotation=45, ha="right", fontsize="small")
    figure.supxlabel("R: turn t -> t+1 (revision); P: parallel sample t -> t+1", fontsize="medium")
    panels[-1].legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return figure


def _known_points(ks: Sequence[int], values: Sequence[float | None]) -> tuple[list[int], list[float]]:
    """The (k, value in %) pairs whose value was measured."""
    pairs = [(k, 100 * value) for k, value in zip(ks, values) if value is not None]
    return [k for k, _ in pairs], [value for _, value in pairs]


def _figure(title: str, xlabel: str, ylabel: str) -> tuple[Figure, Any]:
    """A bare Agg figure: no pyplot, so no global backend or figure registry is touched."""
    figure = Figure(figsize=(7, 4.5), layout="constrained")
    axes = figure.subplots()
    axes.set(title=title, xlabel=xlabel, ylabel=ylabel)
    axes.grid(alpha=0.3)
    return figure, axes


def png_bytes(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120)
    return buffer.getvalue()
