"""Tracking on a real tiny run: TensorBoard event files and W&B offline files, read back by their own readers.

The run (``tests/helpers/eco_run.py``) trains two RISE iterations through the real
train stage (TRL's integration callbacks in the accelerate-launched worker)
and is interrupted before iteration 2 and resumed, so these tests also check
that the global step continues across iterations and processes and that a
resume logs every stage exactly once.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.config.settings import ConfigError, parse_config
from pipeline.run.layout import RunDir
from pipeline.system.atomic import read_jsonl
from pipeline.tracking.trackers import STEP_KEY, logged_stages
from tests.helpers.eco_run import ITERATIONS
from tests.helpers.runs import arithmetic_tasks
from tests.helpers.tracker_files import scalars, wandb_history

pytestmark = pytest.mark.slow


def train_steps(run: RunDir) -> list[int]:
    return [
        json.loads((run.root / f"iter_{k}" / "train" / "train_summary.json").read_text())["steps"]
        for k in range(1, ITERATIONS + 1)
    ]


def eval_summary(run: RunDir, iteration: int) -> dict:
    return json.loads((run.root / f"iter_{iteration}" / "eval" / "eval.json").read_text())


def test_training_loss_is_logged_every_step_on_one_step_axis(tracked_run: RunDir) -> None:
    first, second = train_steps(tracked_run)
    loss = scalars(tracked_run, "train/loss")
    # Iteration 2 trains in a new worker process after the resume; its steps continue iteration 1's.
    assert [step for step, _ in loss] == list(range(1, first + second + 1))
    for tag in ("train/learning_rate", "train/grad_norm", "train/tokens_per_s"):
        assert [step for step, _ in scalars(tracked_run, tag)] == list(range(1, first + second + 1)), tag
    assert all(value > 0 for _, value in scalars(tracked_run, "train/tokens_per_s"))


def test_each_eval_is_logged_once_at_the_steps_trained_so_far(tracked_run: RunDir) -> None:
    first, second = train_steps(tracked_run)
    steps = [0, first, first + second]
    logged = scalars(tracked_run, "eval/pass@1_turn_1")
    assert [step for step, _ in logged] == steps
    expected = [eval_summary(tracked_run, k)["per_turn"][0]["pass@1"] for k in range(ITERATIONS + 1)]
    assert [value for _, value in logged] == pytest.approx(expected)
    interval = eval_summary(tracked_run, 2)["intervals"]["pass@1 turn 3"]
    assert scalars(tracked_run, "eval_interval/pass@1_turn_3_low")[-1] == (
        first + second,
        pytest.approx(interval["low"]),
    )
    assert scalars(tracked_run, "eval/m1@t3")[-1][1] == pytest.approx(eval_summary(tracked_run, 2)["m1@t3"])


def test_curation_and_rollout_figures_are_logged_at_the_step_of_the_model_that_made_them(tracked_run: RunDir) -> None:
    first, _ = train_steps(tracked_run)
    summaries = [json.loads((tracked_run.root / f"iter_{k}" / "curate" / "summary.json").read_text()) for k in (1, 2)]
    assert scalars(tracked_run, "curate/examples") == [(0, summaries[0]["examples"]), (first, summaries[1]["examples"])]
    assert [v for _, v in scalars(tracked_run, "curate/examples_accumulated")] == [
        0,
        summaries[1]["by_source"]["accumulated"],
    ]
    records = read_jsonl(tracked_run.root / "iter_1" / "rollout" / "rollouts.jsonl")
    accuracy = sum(r["turns"][0]["grade"]["correct"] for r in records) / len(records)
    assert scalars(tracked_run, "rollout/accuracy_turn_1")[0] == (0, pytest.approx(accuracy))
    assert [step for step, _ in scalars(tracked_run, "rollout/tokens_per_s")] == [0, first]


def test_wandb_offline_holds_the_same_figures_on_the_same_steps(tracked_run: RunDir) -> None:
    first, second = train_steps(tracked_run)
    history = wandb_history(tracked_run)
    loss_steps = [row[STEP_KEY] for row in history if "train/loss" in row]
    assert loss_steps == list(range(1, first + second + 1))
    evals = [(row[STEP_KEY], row["eval/pass@1_turn_1"]) for row in history if "eval/pass@1_turn_1" in row]
    expected = [eval_summary(tracked_run, k)["per_turn"][0]["pass@1"] for k in range(ITERATIONS + 1)]
    assert evals == [
        (0, pytest.approx(expected[0])),
        (first, pytest.approx(expected[1])),
        (first + second, pytest.approx(expected[2])),
    ]


def test_the_ledger_names_every_stage_once_in_plan_order(tracked_run: RunDir) -> None:
    assert logged_stages(tracked_run) == list(tracked_run.manifest.stages)


def test_report_to_names_known_trackers_once(tmp_path: Path) -> None:
    base = {"tasks": arithmetic_tasks()}
    assert parse_config(base).run.report_to == ["tensorboard"]
    for bad, message in ((["tensorboard", "tensorboard"], "twice"), (["mlflow"], "run.report_to")):
        with pytest.raises(ConfigError, match=message):
            parse_config({**base, "run": {"report_to": bad}})
