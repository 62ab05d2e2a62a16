"""``selfimprove eval RUN -i K --out DIR`` never reports one eval's records as another's, nor writes a run's stages.

The run is built the cheap way: a real run directory on the tiny model served
by the ``hf`` backend in-process, whose trained iterations are LoRA adapters
saved by PEFT and recorded as done in the real manifest (untrained: nothing
here needs them to answer well, and every refusal comes before a model is
loaded). The one eval that generates is a real one, through the CLI.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.config.settings import parse_config
from pipeline.run.layout import RunDir, final_dir, summary_path
from pipeline.run.lock import run_lock
from pipeline.system.atomic import read_jsonl
from tests.helpers.cli import assert_one_line_error


def cli(*args: str | Path) -> tuple[int, str]:
    result = CliRunner().invoke(app, [str(arg) for arg in args])
    return result.exit_code, result.output


def save_untrained_adapters(run: RunDir, model_path: Path, iterations: list[int]) -> None:
    """Iterations' train stages, done: a fresh LoRA adapter each, with the files the train stage records."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(model_path),
        LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM"),
    )
    for iteration in iterations:
        adapter = final_dir(run, iteration)
        model.save_pretrained(adapter)
        summary_path(run, iteration).write_text("{}\n")
        run.manifest.start(iteration, "train")
        outputs = [adapter / "adapter_config.json", adapter / "adapter_model.safetensors", summary_path(run, iteration)]
        run.manifest.complete(iteration, "train", outputs)


@pytest.fixture
def run(tmp_path: Path, tiny_model: Path) -> RunDir:
    """Two iterations, the second one trained (the first is not); 2 eval turns, 1 sample; tasks.jsonl beside it."""
    config = parse_config(
        {
            "run": {"name": "r", "output_dir": str(tmp_path / "runs"), "iterations": 2, "seed": 3},
            "model": {"name_or_path": str(tiny_model), "dtype": "float32", "max_model_len": 1024},
            "rollout": {"backend": "hf", "hf_batch_size": 8},
            "tasks": {"train": {"source": "arithmetic"}, "eval": {"source": "arithmetic", "limit": 3}},
            "grader": {"name": "numeric", "workers": 1},
            "method": {"name": "rise"},
            "evaluation": {"turns": 2, "samples": 1, "sampling": {"temperature": 1.0, "max_tokens": 8}},
        }
    )
    run = RunDir.create(config)
    save_untrained_adapters(run, tiny_model, [2])
    write_tasks(run.root.parent / "tasks.jsonl")
    return run


def eval_args(run: RunDir, out: Path, *options: str) -> list[str | Path]:
    """``eval RUN -i 0 --tasks TASKS --limit 2 --out OUT``, each option given replacing its default."""
    defaults = {"--iteration": "0", "--tasks": str(run.root.parent / "tasks.jsonl"), "--limit": "2"}
    given = dict(zip(options[::2], options[1::2]))
    flags = [item for pair in {**defaults, **given}.items() for item in pair]
    return ["eval", run.root, *flags, "--out", out, "--no-progress"]


def write_tasks(path: Path, first_answer: int = 3) -> None:
    """Three "What is i + 2?" tasks; the first one's answer as given."""
    answers = [first_answer, 4, 5]
    rows = [{"prompt": f"What is {i} + 2?", "answer": answer} for i, answer in enumerate(answers, 1)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder``, relative path -> bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_custom_eval_folder_is_reused_only_by_the_same_eval(run: RunDir) -> None:
    """The user's case: iteration 0 into a folder, then iteration 2 into it, exited 0 with iteration 0's answers."""
    out = run.root / "custom-eval"  # beside the run's stages, as the README shows
    code, output = cli(*eval_args(run, out))
    assert code == 0, output
    assert len(read_jsonl(out / "rollouts.jsonl")) == 2
    written = snapshot(out)

    for options, named in [
        (("--iteration", "2"), "model.iteration: 0 there, 2 asked"),
        (("--limit", "3"), "tasks.limit: 2 there, 3 asked"),
        (("--turns", "3"), "settings.turns: 2 there, 3 asked"),
        (("--samples", "2"), "settings.samples: 1 there, 2 asked"),
        (("--tasks", "arithmetic"), 'tasks.source: "jsonl" there, "arithmetic" asked'),
    ]:
        code, output = cli(*eval_args(run, out, *options))
        assert_one_line_error(code, output, str(out), "another model, tasks or settings", named)
        assert snapshot(out) == written, options

    write_tasks(run.root.parent / "tasks.jsonl", first_answer=30)  # the same file, edited
    code, output = cli(*eval_args(run, out))
    assert_one_line_error(code, output, str(out), "tasks.digest")
    assert snapshot(out) == written
    write_tasks(run.root.parent / "tasks.jsonl")

    with run_lock(out):  # another eval into the same folder, still running
        code, output = cli(*eval_args(run, out))
    assert_one_line_error(code, output, str(out), "in use")
    assert snapshot(out) == written

    code, output = cli(*eval_args(run, out))  # the same eval again: resumed, nothing generated again
    assert code == 0, output
    assert (out / "rollouts.jsonl").read_bytes() == written["rollouts.jsonl"]
    assert json.loads((out / "eval_spec.json").read_text())["model"]["iteration"] == 0


def test_limit_cuts_the_runs_own_eval_tasks_too(run: RunDir, tmp_path: Path) -> None:
    """--limit without --tasks evaluated all of the run's eval tasks (3 here) and reported them as the first N."""
    out = tmp_path / "first-task"
    code, output = cli("eval", run.root, "--limit", "1", "--out", out, "--no-progress")
    assert code == 0, output
    assert json.loads((out / "eval.json").read_text())["n_tasks"] == 1


def test_a_folder_holding_files_but_no_eval_spec_is_refused(run: RunDir, tmp_path: Path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "rollouts.jsonl").write_text(json.dumps({"key": "arith-0#0", "task_id": "arith-0", "sample": 0}) + "\n")
    before = snapshot(out)

    code, output = cli(*eval_args(run, out))
    assert_one_line_error(code, output, str(out), "no eval_spec.json")
    assert snapshot(out) == before  # not even a lock file left in someone else's folder


@pytest.mark.parametrize("where", ["iter_1/eval", "iter_2/eval/parallel", "superseded/iter_1/eval", "."])
def test_an_out_folder_in_the_run_root_or_its_stages_is_refused(run: RunDir, where: str) -> None:
    """The user's case: --out RUN/iter_1/eval replaced the stage's recorded trajectories with the custom eval's."""
    stage = run.stage_dir(1, "eval")
    (stage / "rollouts.jsonl").write_text("".join(json.dumps({"key": f"t{i}#0"}) + "\n" for i in range(200)))
    before = snapshot(run.root)

    code, output = cli(*eval_args(run, run.root / where))
    assert_one_line_error(code, output, "--out", "custom-eval")
    assert snapshot(run.root) == before


def test_a_bad_task_row_is_a_one_line_error(run: RunDir, tmp_path: Path) -> None:
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text(json.dumps({"prompt": "What is 1 + 1?", "answer": 2}) + "\n" + json.dumps({"prompt": "x"}) + "\n")

    code, output = cli(*eval_args(run, tmp_path / "out", "--tasks", str(tasks)))
    assert_one_line_error(code, output, f"{tasks}:2", "answer")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("iteration", "named"),
    [("-1", "has iterations 0..2"), ("3", "has iterations 0..2"), ("1", "iteration 1: its model is not trained yet")],
)
def test_an_iteration_the_run_has_not_trained_is_refused(
    run: RunDir, tmp_path: Path, iteration: str, named: str
) -> None:
    code, output = cli(*eval_args(run, tmp_path / "out", "--iteration", iteration))
    assert_one_line_error(code, output, named)
    assert not (tmp_path / "out").exists()


def test_turns_whose_history_cannot_fit_the_context_are_refused(run: RunDir, tmp_path: Path) -> None:
    """The config's token-budget check holds for --turns too: 200 turns of 8-token answers overflow 1,024 tokens."""
    code, output = cli(*eval_args(run, tmp_path / "out", "--turns", "200"))
    assert_one_line_error(code, output, "--turns 200", "model.max_model_len (1024)")
    assert not (tmp_path / "out").exists()
