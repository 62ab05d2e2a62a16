"""reasoning-gym as a task source and verifier, on tasks it really generates (offline, procedural)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.config.settings import ConfigError, load_config, load_split, parse_config
from pipeline.run.layout import RunDir
from pipeline.system.atomic import read_jsonl
from pipeline.tasks import Task, get_task_source
from rewards import GradeResult, GradingPool, Placement, get_grader
from rewards.extract import MAX_ANSWER_CHARS
from rewards.pool import preloaded
from rewards.reasoning_gym import INSTALL_HINT, ReasoningGymGrader, checked_score
from tests.helpers.cli import assert_one_line_error
from tests.helpers.grading import graded

REPO = Path(__file__).resolve().parents[1]


def tasks(dataset: str, **options: Any) -> dict[str, list[Task]]:
    source = get_task_source("reasoning_gym", dataset=dataset, **options)
    return {split: source.load(split) for split in ("train", "eval")}


def question(task: Task) -> str:
    return task.prompt.split("\nBe concise.")[0]


def boxed(answer: str) -> str:
    return f"Working it out step by step.\nSo the answer is \\boxed{{{answer}}}."


@pytest.fixture(scope="module")
def gsm() -> dict[str, list[Task]]:
    return tasks("gsm_symbolic", seed=0, n_train=30, n_eval=15)


@pytest.fixture(scope="module")
def chain() -> dict[str, list[Task]]:
    return tasks("chain_sum", seed=1, n_train=10, n_eval=10, config={"min_digits": 1, "max_digits": 2, "max_terms": 3})


@pytest.fixture(scope="module")
def grader() -> ReasoningGymGrader:
    return get_grader("reasoning_gym")


# ---------------------------------------------------------------- the source


def test_the_source_generates_the_asked_tasks_in_disjoint_splits(gsm: dict[str, list[Task]]) -> None:
    train, held_out = gsm["train"], gsm["eval"]
    assert (len(train), len(held_out)) == (30, 15)
    for split in (train, held_out):
        assert len({t.task_id for t in split}) == len({question(t) for t in split}) == len(split)
        assert all(t.task_id.startswith("rg-gsm_symbolic-") and t.prompt.endswith("\\boxed{}.") for t in split)
        assert all(t.metadata["dataset"] == "gsm_symbolic" for t in split)
    assert not {question(t) for t in train} & {question(t) for t in held_out}
    assert not {t.task_id for t in train} & {t.task_id for t in held_out}


def test_the_source_is_seeded_and_a_split_ignores_the_others_size(gsm: dict[str, list[Task]]) -> None:
    assert tasks("gsm_symbolic", seed=0, n_train=30, n_eval=15) == gsm
    assert tasks("gsm_symbolic", seed=0, n_train=30, n_eval=40)["train"] == gsm["train"]
    assert tasks("gsm_symbolic", seed=0, n_train=10, n_eval=15)["eval"] == gsm["eval"]
    other = tasks("gsm_symbolic", seed=1, n_train=30, n_eval=15)["train"]
    assert not {t.task_id for t in other} & {t.task_id for t in gsm["train"]}


def test_another_process_generates_the_same_tasks(gsm: dict[str, list[Task]]) -> None:
    """What the grader relies on: pool workers rebuild entries in other processes (another hash seed here)."""
    script = (
        "import json; from pipeline.tasks import get_task_source\n"
        "source = get_task_source('reasoning_gym', dataset='gsm_symbolic', seed=0, n_train=30, n_eval=15)\n"
        "print(json.dumps([t.to_dict() for t in source.load('eval')]))"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONHASHSEED": "12345"}
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert [Task.from_dict(row) for row in json.loads(result.stdout.splitlines()[-1])] == gsm["eval"]


def test_the_dataset_config_reaches_the_dataset(chain: dict[str, list[Task]]) -> None:
    for task in chain["train"] + chain["eval"]:
        terms = question(task).split(":")[1].strip().rstrip("=").split()[::2]
        assert 2 <= len(terms) <= 3 and all(1 <= len(term) <= 2 for term in terms), task.prompt
        assert task.reference["config"]["max_terms"] == 3


def test_a_dataset_with_too_few_problems_says_so() -> None:
    source = get_task_source(
        "reasoning_gym",
        dataset="chain_sum",
        n_eval=500,
        config={"min_digits": 1, "max_digits": 1, "min_terms": 2, "max_terms": 2},
    )
    with pytest.raises(ValueError, match="only .* distinct 'chain_sum' problems found for split 'eval'"):
        source.load("eval")


# ---------------------------------------------------------------- the grader


def test_right_answers_score_one_in_a_box_or_in_answer_tags(
    grader: ReasoningGymGrader, gsm: dict[str, list[Task]], chain: dict[str, list[Task]]
) -> None:
    for task in gsm["eval"] + chain["eval"]:
        answer = task.reference["answer"]
        for response in (
            boxed(answer),
            f"Thinking...\n<answer>{answer}</answer>",
            f"<answer>1</answer> \\boxed{{{answer}}}",
        ):
            result = grader.grade(response, task.reference)
            assert (result.score, result.correct, result.parsed, result.error) == (1.0, True, answer, None), response


def test_wrong_answers_get_the_datasets_own_score(
    grader: ReasoningGymGrader, gsm: dict[str, list[Task]], chain: dict[str, list[Task]]
) -> None:
    for task in chain["eval"]:
        wrong = str(int(task.reference["answer"]) + 1)
        result = grader.grade(boxed(wrong), task.reference)
        assert (result.score, result.correct, result.parsed, result.error) == (0.0, False, wrong, None)
        assert result.feedback.startswith("Your answer is incorrect.")
    for task in gsm["eval"]:
        # gsm_symbolic's score_answer gives 0.01 for a number that is not the answer: partial credit, not correct.
        result = grader.grade(boxed(str(int(task.reference["answer"]) + 1)), task.reference)
        assert (result.score, result.correct, result.error) == (0.01, False, None)
    assert grader.binary is False and grader.placement is Placement.POOL_CHUNKED


def test_equal_answers_vote_together(grader: ReasoningGymGrader, gsm: dict[str, list[Task]]) -> None:
    task = gsm["eval"][0]
    keys = {
        grader.grade(response, task.reference).answer_key
        for response in ("\\boxed{ 12  }", "<answer>12</answer>", "so \\boxed{12}.")
    }
    assert keys == {"12"}
    assert grader.grade("I do not know.", task.reference).answer_key is None


def test_a_response_without_an_answer_is_wrong_not_an_error(
    grader: ReasoningGymGrader, gsm: dict[str, list[Task]]
) -> None:
    task = gsm["eval"][0]
    for response in ("", "The answer is 12.", "Put your answer in \\boxed{}.", "<answer></answer>", "<answer>12"):
        result = grader.grade(response, task.reference)
        assert (result.score, result.correct, result.parsed, result.error) == (0.0, False, None, None), response


def test_with_last_number_an_unboxed_number_is_the_answer(chain: dict[str, list[Task]]) -> None:
    grader = get_grader("reasoning_gym", last_number=True)
    task = chain["eval"][0]
    answer = task.reference["answer"]
    right = grader.grade(f"Adding them up gives {answer}.", task.reference)
    assert (right.score, right.correct, right.parsed, right.answer_key) == (1.0, True, answer, answer)
    boxed_wins = grader.grade(f"{answer}, no: \\boxed{{{int(answer) + 1}}}", task.reference)
    assert (boxed_wins.correct, boxed_wins.parsed) == (False, str(int(answer) + 1))
    assert grader.grade("I cannot say.", task.reference).parsed is None


HOSTILE_RESPONSES = [
    None,
    b"\\boxed{1}",
    "x" * 5_000_000,
    "\\boxed{" + "9" * (MAX_ANSWER_CHARS + 1) + "}",
    "<answer>" + "9" * (MAX_ANSWER_CHARS + 1) + "</answer>",
    "\\boxed{" * 10_000 + "1" + "}" * 10_000,
    "<answer>" * 100_000,
    "</answer><answer>" * 50_000,
    "\\boxed{\x00\ud800}",
]


@pytest.mark.parametrize("response", HOSTILE_RESPONSES, ids=range(len(HOSTILE_RESPONSES)))
@pytest.mark.parametrize("last_number", [False, True])
def test_junk_and_enormous_responses_are_graded_not_raised(
    gsm: dict[str, list[Task]], response: Any, last_number: bool
) -> None:
    result = get_grader("reasoning_gym", last_number=last_number).grade(response, gsm["eval"][0].reference)
    assert isinstance(result, GradeResult)
    assert result.correct is False and 0.0 <= result.score < 1.0


def test_references_that_name_no_entry_are_grading_failures(
    grader: ReasoningGymGrader, gsm: dict[str, list[Task]]
) -> None:
    reference = gsm["eval"][0].reference
    answer = boxed(reference["answer"])
    for bad, reason in [
        ("42", "reference is not a reasoning-gym task"),
        ({**reference, "dataset": "no_such_dataset"}, "unknown reasoning-gym dataset 'no_such_dataset'"),
        ({**reference, "index": 10**9}, "reference index 1000000000 is outside"),
        ({**reference, "index": True}, "reference index True is outside"),
        ({**reference, "config": {**reference["config"], "difficulty": 3.0}}, "refuses the config"),
        ({**reference, "digest": "0" * 16}, "differs from the task's"),
    ]:
        result = grader.grade(answer, bad)
        assert (result.score, result.correct) == (0.0, False)
        assert result.error is not None and reason in result.error, (bad, result.error)


def test_references_survive_json_as_rollout_records_keep_them(
    grader: ReasoningGymGrader, gsm: dict[str, list[Task]]
) -> None:
    task = gsm["eval"][3]
    again = Task.from_dict(json.loads(json.dumps(task.to_dict())))
    assert again == task
    assert grader.grade(boxed(task.reference["answer"]), again.reference).correct


@pytest.mark.parametrize("score", [math.nan, math.inf, -0.5, 1.5, "1", True, None])
def test_scores_outside_zero_to_one_are_refused(score: Any) -> None:
    assert checked_score(score) is None


def test_a_dataset_scoring_out_of_range_is_a_grading_failure(
    grader: ReasoningGymGrader, chain: dict[str, list[Task]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """No shipped dataset returns NaN, so this one's score_answer is replaced (the mock says so)."""
    from reasoning_gym.arithmetic.chain_sum import ChainSumDataset

    monkeypatch.setattr(ChainSumDataset, "score_answer", lambda self, answer, entry: math.nan)
    task = chain["eval"][0]
    result = grader.grade(boxed(task.reference["answer"]), task.reference)
    assert (result.score, result.correct) == (0.0, False)
    assert result.error == "chain_sum's score_answer returned nan, not a number in [0, 1]"


class ModulesProbe:
    """A grader whose "answer" says whether its worker had reasoning_gym imported before the job."""

    name = "probe"
    binary = True
    placement = Placement.POOL

    def grade(self, response: str, reference: Any) -> GradeResult:
        return GradeResult(0.0, False, str("reasoning_gym" in sys.modules), "")

    def cluster_keys(self, keys: list[str]) -> dict[str, str]:
        return {key: key for key in keys}


def test_pool_workers_import_reasoning_gym_before_their_first_job(
    grader: ReasoningGymGrader, gsm: dict[str, list[Task]]
) -> None:
    """Its import takes seconds, which a worker's first job must not spend out of its deadline."""
    assert preloaded(grader) == ("reasoning_gym",)
    with GradingPool(max_workers=1, preload=preloaded(grader)) as pool:
        assert [r.parsed for r in graded(pool, ModulesProbe(), [("", None)])] == ["True"]
        pairs = [(boxed(t.reference["answer"]), t.reference) for t in gsm["eval"]] + [
            ("\\boxed{-1}", gsm["eval"][0].reference)
        ]
        assert [r.correct for r in graded(pool, grader, pairs)] == [True] * len(gsm["eval"]) + [False]


def test_an_eval_stage_grades_reasoning_gym_tasks(tmp_path: Path, tiny_model: Path) -> None:
    """The whole path from the user's side: the run's eval, its records' references read back by pool workers."""
    config = parse_config(
        {
            "run": {"name": "rg", "output_dir": str(tmp_path), "iterations": 1, "seed": 0},
            "model": {"name_or_path": str(tiny_model), "dtype": "float32", "max_model_len": 1024},
            "rollout": {"backend": "hf", "hf_batch_size": 8},
            "tasks": {
                "train": {"source": "reasoning_gym", "options": {"dataset": "chain_sum", "n_train": 4, "n_eval": 2}},
                "eval": {"source": "reasoning_gym", "options": {"dataset": "chain_sum", "n_train": 4, "n_eval": 2}},
            },
            "grader": {"name": "reasoning_gym", "workers": 1},
            "method": {"name": "rise"},
            "evaluation": {"turns": 2, "samples": 1, "sampling": {"temperature": 1.0, "max_tokens": 8}},
        }
    )
    run = RunDir.create(config)
    result = CliRunner().invoke(app, ["eval", str(run.root), "--no-progress"])
    assert result.exit_code == 0, result.output
    records = read_jsonl(run.root / "iter_0" / "eval" / "rollouts.jsonl")
    expected = {
        t.task_id: t.reference
        for t in get_task_source("reasoning_gym", dataset="chain_sum", n_train=4, n_eval=2).load("eval")
    }
    assert {r["task_id"]: r["reference"] for r in records} == expected
    grades = [turn["grade"] for record in records for turn in record["turns"]]
    assert len(grades) == 4
    assert all(grade["error"] is None for grade in grades), grades  # graded (the tiny model answers nothing right)


# ---------------------------------------------------------------- config


def config_data(
    train: dict[str, Any], grader: str = "reasoning_gym", eval_source: dict[str, Any] | None = None
) -> dict[str, Any]:
    return {"tasks": {"train": train, "eval": eval_source or train}, "grader": {"name": grader}}


GSM = {"source": "reasoning_gym", "options": {"dataset": "gsm_symbolic"}}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            config_data({"source": "reasoning_gym", "options": {"dataset": "gsm_symbolc"}}),
            "unknown reasoning-gym dataset 'gsm_symbolc' (did you mean gsm_symbolic?); known: ab, acre",
        ),
        (config_data({"source": "reasoning_gym", "options": {}}), "the reasoning_gym source needs `dataset`"),
        (
            config_data({"source": "reasoning_gym", "options": {"dataset": "chain_sum", "config": {"max_digit": 2}}}),
            "reasoning-gym dataset 'chain_sum' refuses the config",
        ),
        (
            config_data(
                {"source": "reasoning_gym", "options": {"dataset": "gsm_symbolic", "config": {"difficulty": 2.0}}}
            ),
            "AssertionError in its config check",
        ),
        (
            config_data({"source": "reasoning_gym", "options": {"dataset": "gsm_symbolic", "config": {"seed": 3}}}),
            "config.seed is the source's to set",
        ),
        (config_data(GSM, grader="numeric"), "tasks.train.source 'reasoning_gym' with grader.name 'numeric'"),
        (
            config_data({"source": "arithmetic"}, eval_source=GSM),
            "tasks.train.source 'arithmetic' with grader.name 'reasoning_gym'",
        ),
    ],
)
def test_bad_reasoning_gym_configs_fail_on_one_line(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_an_unknown_dataset_stops_the_cli_on_one_line(tmp_path: Path) -> None:
    path = tmp_path / "rg.yaml"
    path.write_text(yaml.safe_dump(config_data({"source": "reasoning_gym", "options": {"dataset": "gsm_symbolc"}})))
    result = CliRunner().invoke(app, ["run", str(path), "--dry-run"])
    assert_one_line_error(result.exit_code, result.output, "tasks.train", "unknown reasoning-gym dataset 'gsm_symbolc'")


def test_the_shipped_config_is_the_quickstarts_recipe_on_reasoning_gym_arithmetic() -> None:
    quickstart = yaml.safe_load((REPO / "configs" / "quickstart.yaml").read_text())
    shipped = yaml.safe_load((REPO / "configs" / "rise_reasoning_gym.yaml").read_text())
    for data in (quickstart, shipped):
        del data["tasks"], data["grader"], data["run"]["name"]
    assert shipped == quickstart
    config = load_config(REPO / "configs" / "rise_reasoning_gym.yaml")
    assert (config.grader.name, config.grader.options) == ("reasoning_gym", {"last_number": True})
    assert config.tasks.train == config.tasks.eval and config.tasks.train.options["dataset"] == "basic_arithmetic"
    # Two numbers of up to two digits, added or multiplied.
    for task in load_split(config.tasks.eval, "eval")[:50]:
        left, operator, right = question(task).removeprefix("Calculate ").rstrip(".").split()
        assert operator in "+*" and all(1 <= len(number) <= 2 for number in (left, right)), task.prompt


WITHOUT_REASONING_GYM = """
import sys
sys.modules["reasoning_gym"] = None  # what Python does for a package that is not there: its import fails
from pipeline.config.settings import ConfigError, load_config, load_split, parse_config
import rewards
parse_config({"tasks": {"train": {"source": "arithmetic"}, "eval": {"source": "arithmetic"}}})
for data in ({"tasks": {"train": %(gsm)r, "eval": %(gsm)r}, "grader": {"name": "reasoning_gym"}},
             {"tasks": {"train": %(gsm)r, "eval": %(gsm)r}, "grader": {"name": "numeric"}}):
    try:
        parse_config(data)
    except ConfigError as exc:
        print(exc)
print(rewards.get_grader("numeric").grade("\\\\boxed{3}", "3").correct)
"""


def test_without_reasoning_gym_the_project_works_and_the_source_says_how_to_install() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    script = WITHOUT_REASONING_GYM % {"gsm": GSM}
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 3 and lines[2] == "True", result.stdout
    assert all(INSTALL_HINT in line for line in lines[:2]), lines
