"""The figures a finished stage logs to the run's trackers, read from the stage's files.

They live here, above the stages, because they read what each stage wrote
in its own terms (an eval's ``eval.json``, a curation's ``summary.json``, a
rollout's typed records); :func:`pipeline.tracking.trackers.sync_tracking`
logs them without knowing any stage. Read from files, not from memory, so a
stage an earlier process finished is logged the same way.
"""

from __future__ import annotations

from typing import Any

from pipeline.rollouts.records import TrajectoryRecord, read_records
from pipeline.run.files import EVAL_NAME, ROLLOUTS_NAME, SUMMARY_NAME, THROUGHPUT_NAME
from pipeline.run.layout import RunDir, stage_path
from pipeline.system.atomic import read_json


def eval_metrics(summary: dict[str, Any]) -> dict[str, float]:
    """An ``eval.json`` as flat scalars: pass@1 per turn, the headline figures, and each interval's bounds."""
    turns = summary["turns"]
    metrics = {f"eval/pass@1_turn_{row['turn']}": row["pass@1"] for row in summary["per_turn"]}
    for key in (
        f"m1@t{turns}",
        f"p1@t{turns}",
        f"m{turns}@t1",
        f"p{turns}@t1",
        "delta_i_to_c",
        "delta_c_to_i",
        "delta_t1_tT",
    ):
        metrics[f"eval/{key}"] = summary.get(key)
    for key, interval in summary.get("intervals", {}).items():
        name = _tag(key)
        metrics[f"eval/{name}"] = interval["estimate"]
        metrics[f"eval_interval/{name}_low"] = interval["low"]
        metrics[f"eval_interval/{name}_high"] = interval["high"]
    metrics["eval/incomplete"] = summary.get("incomplete")
    return _scalars(metrics)


def curate_metrics(summary: dict[str, Any]) -> dict[str, float]:
    """A curate ``summary.json`` as scalars: examples in all, per turn and per source."""
    metrics: dict[str, Any] = {"curate/examples": summary["examples"], "curate/mean_reward": summary.get("mean_reward")}
    metrics |= {f"curate/examples_turn_{turn}": count for turn, count in summary["by_turn"].items()}
    metrics |= {f"curate/examples_{source}": count for source, count in summary["by_source"].items()}
    metrics |= {f"curate/examples_{kind}": count for kind, count in summary.get("by_kind", {}).items()}
    metrics["curate/unparsed_targets"] = summary.get("unparsed")
    return _scalars(metrics)


def rollout_metrics(records: list[TrajectoryRecord], throughput: dict[str, Any] | None) -> dict[str, float]:
    """Accuracy of the chosen answer at each turn a trajectory reached, errors, and the last attempt's tokens/s."""
    reached: dict[int, int] = {}
    correct: dict[int, int] = {}
    for record in records:
        for turn in record.turns:
            reached[turn.turn] = reached.get(turn.turn, 0) + 1
            correct[turn.turn] = correct.get(turn.turn, 0) + int(turn.grade.correct)
    metrics: dict[str, Any] = {f"rollout/accuracy_turn_{t}": correct[t] / reached[t] for t in sorted(reached)}
    metrics["rollout/trajectories"] = len(records)
    metrics["rollout/errors"] = sum(record.error is not None for record in records)
    metrics["rollout/solved"] = sum(record.solved_at_turn is not None for record in records)
    if throughput is not None:
        metrics["rollout/tokens_per_s"] = throughput.get("tokens_per_s")
    return _scalars(metrics)


def stage_metrics(run: RunDir, iteration: int, stage: str) -> dict[str, float]:
    """The figures the pipeline logs for one finished stage (a train stage: none, TRL logged them)."""
    stage_dir = stage_path(run.root, iteration, stage)
    if stage == "eval":
        return eval_metrics(read_json(stage_dir / EVAL_NAME))
    if stage == "curate":
        return curate_metrics(read_json(stage_dir / SUMMARY_NAME))
    if stage == "rollout":
        throughput = stage_dir / THROUGHPUT_NAME
        return rollout_metrics(
            read_records(stage_dir / ROLLOUTS_NAME), read_json(throughput) if throughput.is_file() else None
        )
    return {}


def _tag(key: str) -> str:
    """A summary key as a tag without spaces (``pass@1 turn 2`` -> ``pass@1_turn_2``)."""
    return key.replace(" ", "_")


def _scalars(metrics: dict[str, Any]) -> dict[str, float]:
    """Drop figures that were not measured (None), so trackers never plot a gap as zero."""
    return {key: float(value) for key, value in metrics.items() if value is not None}
