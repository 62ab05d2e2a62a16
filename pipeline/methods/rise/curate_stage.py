"""The ``curate`` stage: iteration K's rollouts become RISE's weighted SFT set.

Reads ``iter_K/rollout/rollouts.jsonl``, keeps the turns the configured
selection criterion keeps (only informative states with
``method.informative_only``), adds wrong -> right pairs
(``method.pairs_per_state``) and rationalized targets (``method.rationalize``), caps keep examples (``method.keep_ratio``),
adds unlikelihood examples of repeated refuted answers
(``method.refuted_weight``), boost data when ``method.boost`` is set and
the training sets of iterations 1..K-1 when ``method.accumulate`` is set, and
writes ``iter_K/curate/train.jsonl`` and ``summary.json`` atomically. The
stage is recorded in the manifest; a rerun of a finished stage does nothing.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.methods.rise.curation import (
    Example,
    accumulate,
    boost_examples,
    cap_keeps,
    count_skips,
    curate,
    pair_examples,
    rationale_examples,
    refuted_examples,
    summarize,
)
from pipeline.methods.rise.method import RiseMethod
from pipeline.rollouts.records import TrajectoryRecord, read_records
from pipeline.run.files import ROLLOUTS_NAME, SUMMARY_NAME, TRAIN_NAME
from pipeline.run.layout import RunDir, stage_path
from pipeline.run.lifecycle import StageError, stage_attempt
from pipeline.system.atomic import read_jsonl, write_json_atomic, write_jsonl_atomic
from pipeline.training.launch import TrainError

STAGE = "curate"


class CurateError(StageError):
    """The curate stage cannot run with this run's config or files."""


def rise_method(run: RunDir) -> RiseMethod:
    method = run.config.method
    if not isinstance(method, RiseMethod):
        raise CurateError(f"the curate stage builds RISE training data, but this run's method is {method.name!r}")
    return method


def rollout_records(run: RunDir, iteration: int) -> list[TrajectoryRecord]:
    """Iteration ``iteration``'s finished rollouts; refuses a rollout stage the manifest does not call done."""
    path = stage_path(run.root, iteration, "rollout") / ROLLOUTS_NAME
    if not run.manifest.verified_done(iteration, "rollout") or not path.is_file():
        raise CurateError(
            f"iteration {iteration}'s rollout stage is not done (no finished {path}); "
            f"run `selfimprove rollout {run.root} --iteration {iteration}` first"
        )
    return read_records(path)


def earlier_examples(run: RunDir, iteration: int) -> list[list[Example]]:
    """The training sets of iterations 1..``iteration``-1, oldest first."""
    lists = []
    for earlier in range(1, iteration):
        path = stage_path(run.root, earlier, STAGE) / TRAIN_NAME
        if not run.manifest.verified_done(earlier, STAGE) or not path.is_file():
            raise CurateError(f"accumulating data needs iteration {earlier}'s curate output, but {path} is not done")
        lists.append([Example.from_dict(row) for row in read_jsonl(path, whole=True)])
    return lists


def build_training_set(run: RunDir, iteration: int) -> tuple[list[Example], dict]:
    """The examples and summary of iteration ``iteration`` (no writes)."""
    method, rollout = rise_method(run), run.config.rollout
    records = rollout_records(run, iteration)
    current = curate(records, method.tau, method.selection, iteration, method.unparsed_reward, method.informative_only)
    if method.pairs_per_state:
        current += pair_examples(
            records,
            method.tau,
            iteration,
            method.pairs_per_state,
            method.feedback,
            rollout.templates,
            rollout.history_window,
        )
    if method.rationalize:
        current += rationale_examples(records, method.tau, iteration)
    if method.keep_ratio is not None:
        current = cap_keeps(current, method.keep_ratio)
    if method.refuted_weight is not None:
        current += refuted_examples(records, method.refuted_weight, iteration)
    if method.boost:
        current += boost_examples(records, method.tau, iteration)
    earlier = earlier_examples(run, iteration) if method.accumulate else []
    examples = accumulate(current, earlier)
    return examples, summarize(examples, iteration, method.tau, method.selection, count_skips(records))


def run_curate_stage(run: RunDir, iteration: int) -> Path:
    """Build and write iteration ``iteration``'s training set; returns the path of ``train.jsonl``.

    Both files are written atomically before the manifest calls the stage
    done, so a crash leaves either no stage output or a complete one.
    """
    rise_method(run)  # a run of another method has no curate stage: say so before the plan does
    with stage_attempt(run.manifest, iteration, STAGE) as attempt:
        out_dir = run.stage_dir(iteration, STAGE)
        train_path, summary_path = out_dir / TRAIN_NAME, out_dir / SUMMARY_NAME
        if not attempt.done:
            examples, summary = build_training_set(run, iteration)
            write_jsonl_atomic(train_path, (e.to_dict() for e in examples))
            write_json_atomic(summary_path, summary)
            attempt.outputs = [train_path, summary_path]
    return train_path


def training_set(run: RunDir, iteration: int) -> Path:
    """Iteration ``iteration``'s curated training set; refuses a curate stage that is not done, or an empty set."""
    path = stage_path(run.root, iteration, STAGE) / TRAIN_NAME
    if not run.manifest.verified_done(iteration, STAGE) or not path.is_file():
        raise TrainError(
            f"iteration {iteration}'s curate stage is not done (no finished {path}); "
            f"run `selfimprove curate {run.root} --iteration {iteration}` first"
        )
    if path.stat().st_size == 0:
        raise TrainError(f"iteration {iteration}'s training set {path} is empty: no rollout turn was kept")
    return path
