"""The whole RISE loop on the tiny model: eval(0), 2 iterations, resume after SIGKILL, the eval CLI.

Everything is real: vLLM CPU servers, the numeric grader in its pool, TRL
training launched by accelerate in a subprocess, the CLI in a subprocess.
The model is the tiny random-weights model with the LoRA of ``conftest.py``
merged in: it answers ``\\boxed{7}`` (mostly; sampling is at temperature 1),
so tasks whose answer is 7 can be solved and every other answer is parsed and
wrong. That exercises stop-at-success, curation and the metrics with real
grades; these tests check that every stage runs and writes what it should,
and that interrupted runs end with exactly the records of an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
import random
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

from pipeline.engine.vllm_server import VLLMServer
from pipeline.run.manifest import Manifest, StageState, planned_stages
from pipeline.run.timings import stage_times
from pipeline.system.atomic import read_jsonl
from tests.helpers.cli_runs import REPO, SMOKE_TURNS, cli, cli_env, run_cli, smoke_config, write_config

pytestmark = pytest.mark.slow

TURNS = SMOKE_TURNS
EVAL_KEYS = {
    "per_turn",
    f"m1@t{TURNS}",
    f"p1@t{TURNS}",
    f"m{TURNS}@t1",
    f"p{TURNS}@t1",
    "delta_t1_tT",
    "delta_i_to_c",
    "delta_c_to_i",
    "n_tasks",
    "turns",
    "samples",
    "intervals",
    "incomplete",
    "incomplete_parallel",
    "grading_errors",
    "bootstrap_seed",
    "history_window",
    "transitions",
}


def record_digests(path: Path) -> Counter:
    """Content hashes of a JSONL file's records, minus the served adapter's name (it contains the run name)."""
    digests = Counter()
    for record in read_jsonl(path):
        record.pop("adapter", None)
        digests[hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()] += 1
    return digests


def run_records(root: Path) -> dict[str, Counter]:
    """Every trajectory and example file of a finished run, relative path -> record digests."""
    files = sorted(root.glob("iter_*/*/rollouts.jsonl")) + sorted(root.glob("iter_*/eval/parallel/rollouts.jsonl"))
    files += sorted(root.glob("iter_*/curate/train.jsonl"))
    return {str(path.relative_to(root)): record_digests(path) for path in files}


@pytest.fixture(scope="module")
def finished_run(answering_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted `selfimprove run` of the smoke config, with servers managed by the stages."""
    tmp_path = tmp_path_factory.mktemp("uninterrupted")
    config = write_config(tmp_path, smoke_config(tmp_path / "runs", answering_model, "smoke"))
    result = run_cli("run", str(config), "--no-progress")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "m1@t3" in result.stdout  # the report table printed at the end
    return tmp_path / "runs" / "smoke"


def test_run_goes_through_every_stage_and_writes_its_outputs(finished_run: Path) -> None:
    manifest = Manifest.load(finished_run)
    plan = planned_stages(2)
    assert [key for key in manifest.stages] == [f"iter_{k}/{s}" for k, s in plan]
    assert all(manifest.is_done(k, s) for k, s in plan)
    for iteration in (0, 1, 2):
        summary = json.loads((finished_run / f"iter_{iteration}" / "eval" / "eval.json").read_text())
        assert set(summary) == EVAL_KEYS
        assert summary["n_tasks"] == 5 and summary["turns"] == TURNS and summary["samples"] == 1
        assert [row["turn"] for row in summary["per_turn"]] == [1, 2, 3]
        # n = 1 < T = 3: the parallel baseline drew T first-turn answers per task in its own request.
        parallel = read_jsonl(finished_run / f"iter_{iteration}" / "eval" / "parallel" / "rollouts.jsonl")
        assert len(parallel) == 5 and all(len(r["turns"][0]["candidates"]) == TURNS for r in parallel)
        assert summary["m3@t1"] is not None and summary["p3@t1"] is not None
        assert summary["incomplete"] == summary["incomplete_parallel"] == summary["grading_errors"] == 0
        task_rows = read_jsonl(finished_run / f"iter_{iteration}" / "eval" / "task_metrics.jsonl")
        assert len(task_rows) == 5 and summary["m1@t3"] == pytest.approx(sum(r["m1@t3"] for r in task_rows) / 5)
        eval_records = read_jsonl(finished_run / f"iter_{iteration}" / "eval" / "rollouts.jsonl")
        assert all(len(r["turns"]) == TURNS and r["error"] is None for r in eval_records)
    for iteration in (1, 2):
        train_dir = finished_run / f"iter_{iteration}" / "train"
        assert (train_dir / "adapter" / "adapter_model.safetensors").is_file()
        # Iteration 2 trained iteration 1's model's data plus its own (accumulate), served iteration 1's adapter.
        rollouts = read_jsonl(finished_run / f"iter_{iteration}" / "rollout" / "rollouts.jsonl")
        assert {r["adapter"] for r in rollouts} == {None if iteration == 1 else "smoke-iter1"}
    examples = [read_jsonl(finished_run / f"iter_{k}" / "curate" / "train.jsonl") for k in (1, 2)]
    assert {e["example_id"] for e in examples[0]} < {e["example_id"] for e in examples[1]}
    report = (finished_run / "report.md").read_text()
    assert "m1@t3" in report and "## Transitions" in report
    for png in ("accuracy_by_turn.png", "sequential_vs_parallel.png", "transitions.png"):
        assert (finished_run / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_consecutive_stages_that_serve_one_model_share_its_server(finished_run: Path) -> None:
    """eval(K) and rollout(K+1) serve iteration K's model: one server start; training needs the devices back."""
    times = {times.stage: times for times in stage_times(finished_run)}
    assert list(times) == [f"iter_{k}/{s}" for k, s in planned_stages(2)]
    starts = {stage: times[stage].server_starts for stage in times}
    assert starts == {
        "iter_0/eval": 1,
        "iter_1/rollout": 0,
        "iter_1/curate": 0,
        "iter_1/train": 0,
        "iter_1/eval": 1,
        "iter_2/rollout": 0,
        "iter_2/curate": 0,
        "iter_2/train": 0,
        "iter_2/eval": 1,
    }
    for iteration in (1, 2):  # served by the eval's server before it, whose log holds both stages' requests
        assert not (finished_run / f"iter_{iteration}" / "rollout" / "vllm_server.log").exists()
        assert (finished_run / f"iter_{iteration - 1}" / "eval" / "vllm_server.log").stat().st_size > 0
        assert times[f"iter_{iteration}/rollout"].phases["generation"] > 0
        train = times[f"iter_{iteration}/train"]
        assert 0 < train.phases["training"] <= train.wall + 1  # the manifest's times are whole seconds
    assert times["iter_0/eval"].phases["server_start"] > 0


def test_status_shows_a_finished_run(finished_run: Path) -> None:
    result = run_cli("status", str(finished_run))
    assert result.returncode == 0, result.stderr
    assert "all stages done" in result.stdout
    assert result.stdout.count("done") >= len(planned_stages(2))


def running_stages(root: Path) -> set[str]:
    """The stages the manifest calls running: read after a SIGKILL, the stages that kill interrupted."""
    if not (root / "manifest.json").exists():
        return set()
    return {key for key, record in Manifest.load(root).stages.items() if record.state is StageState.RUNNING}


def stage_progress(root: Path, stage: str) -> tuple[int, bool]:
    """``(attempts, done)`` of one stage in the run's manifest; ``(0, False)`` before the run writes it."""
    if not (root / "manifest.json").exists():
        return 0, False
    record = Manifest.load(root).stages[stage]
    return record.attempts, record.state is StageState.DONE


def killed_inside(process: subprocess.Popen, root: Path, stage: str, attempts_before: int, delay: float) -> bool:
    """SIGKILL ``process`` ``delay`` seconds after it starts an attempt of ``stage``; False if it ended first.

    Waiting for the stage's attempt count to rise, rather than for a time
    since the start, puts the kill inside the pipeline's work however fast the
    machine is (a timed kill can land before the first stage or between two),
    and a stage that runs for less than a poll is not missed. A stage done
    before this process started is not waited for.
    """
    while process.poll() is None:
        attempts, done = stage_progress(root, stage)
        if attempts > attempts_before or done:
            break
        time.sleep(0.05)
    try:
        process.wait(timeout=delay)
        return False
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGKILL)
        process.wait()
        return True


KILL_IN = ("iter_1/rollout", "iter_1/train", "iter_2/eval")


def test_sigkill_inside_stages_then_resume_gives_the_same_records(
    finished_run: Path, answering_server: VLLMServer, answering_model: Path, tmp_path: Path
) -> None:
    """SIGKILL `selfimprove run`, then each `resume`, a seeded random moment into a stage, until one finishes."""
    config = write_config(tmp_path, smoke_config(tmp_path / "runs", answering_model, "killed", [answering_server.url]))
    root = tmp_path / "runs" / "killed"
    rng = random.Random(20261123)
    interrupted, command = set(), cli("run", str(config), "--no-progress")
    for stage in (*KILL_IN, None):
        attempts_before = stage_progress(root, stage)[0] if stage is not None else 0
        process = subprocess.Popen(command, cwd=REPO, env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if stage is not None and killed_inside(process, root, stage, attempts_before, rng.uniform(0.2, 1.5)):
            interrupted |= running_stages(root)
            command = cli("resume", str(root), "--no-progress")
            time.sleep(1.0)  # let the killed process's children see their parent die
            continue
        assert process.wait() == 0, process.stderr.read().decode()
        process.stderr.close()
        break

    manifest = Manifest.load(root)
    assert "iter_1/train" in interrupted
    assert all(manifest.stages[key].attempts >= 2 for key in interrupted), interrupted  # each interrupted stage re-ran
    assert all(manifest.is_done(k, s) for k, s in planned_stages(2))
    killed, whole = run_records(root), run_records(finished_run)
    assert sorted(killed) == sorted(whole)
    for name in whole:
        assert killed[name] == whole[name], f"{name} differs after kill + resume"
    assert not list(root.glob("**/rollouts.partial.jsonl"))


def test_eval_cli_evaluates_other_tasks_into_out_dir(finished_run: Path, tmp_path: Path) -> None:
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text("".join(json.dumps({"prompt": f"What is {i} + 2?", "answer": i + 2}) + "\n" for i in range(3)))
    out = tmp_path / "custom"
    result = run_cli(
        "eval",
        str(finished_run),
        "--iteration",
        "2",
        "--tasks",
        str(tasks),
        "--turns",
        "2",
        "--samples",
        "2",
        "--out",
        str(out),
        "--no-progress",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads((out / "eval.json").read_text())
    assert summary["n_tasks"] == 3 and summary["turns"] == 2 and summary["samples"] == 2
    assert set(summary["per_turn"][0]["pass@k"]) == {"1", "2"}
    assert not (out / "parallel").exists()  # n >= T: the trajectories' first turns are the parallel samples
    rows = read_jsonl(out / "per_task.jsonl")
    assert len(rows) == 3 * 2 * 2
    manifest = Manifest.load(finished_run)
    assert manifest.record(2, "eval").attempts == 1  # outside the plan: the manifest is untouched


def test_eval_cli_asks_for_an_out_dir_with_custom_tasks(finished_run: Path) -> None:
    result = run_cli("eval", str(finished_run), "--turns", "2")
    assert result.returncode == 1
    assert "--out" in result.stderr
