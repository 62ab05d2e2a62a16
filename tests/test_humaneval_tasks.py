"""The ``humaneval`` and ``mbpp_jsonl`` task sources, and the shipped MBPP-format sample."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.tasks.base import get_task_source
from pipeline.tasks.humaneval import HumanEvalSource
from pipeline.tasks.mbpp import SAMPLE_PATH, MbppJsonlSource
from pipeline.tasks.rows import BadRowError
from rewards.code import CodeGrader
from rewards.pool import GradingPool
from tests.helpers.grading import graded


def test_sources_are_registered() -> None:
    assert isinstance(get_task_source("humaneval"), HumanEvalSource)
    assert isinstance(get_task_source("mbpp_jsonl", path=str(SAMPLE_PATH)), MbppJsonlSource)


# -------------------------------------------------------------- humaneval


def test_humaneval_is_all_164_problems() -> None:
    tasks = HumanEvalSource().load("test")
    assert len(tasks) == 164
    assert [task.task_id for task in tasks[:2]] == ["HumanEval/0", "HumanEval/1"]
    first = tasks[0]
    assert set(first.reference) == {"prompt", "entry_point", "test", "canonical_solution"}
    assert first.reference["entry_point"] == "has_close_elements" == first.metadata["entry_point"]
    assert first.reference["prompt"] in first.prompt and "```python" in first.prompt


def test_humaneval_partition_is_seeded_disjoint_and_complete() -> None:
    source = HumanEvalSource(eval_fraction=0.25, seed=3)
    train, held_out = source.load("train"), source.load("eval")
    train_ids, eval_ids = {t.task_id for t in train}, {t.task_id for t in held_out}
    assert len(eval_ids) == 41 and not train_ids & eval_ids and len(train_ids | eval_ids) == 164
    assert [t.task_id for t in HumanEvalSource(eval_fraction=0.25, seed=3).load("eval")] == [
        t.task_id for t in held_out
    ]
    assert {t.task_id for t in HumanEvalSource(eval_fraction=0.25, seed=4).load("eval")} != eval_ids


def test_humaneval_unpartitioned_splits_are_all_problems() -> None:
    """So the source can fill the eval section (or the train section) of a run config."""
    source = HumanEvalSource(limit=3)
    assert source.load("train") == source.load("eval") == source.load("test")


def test_humaneval_split_errors_and_limit() -> None:
    with pytest.raises(ValueError, match="eval_fraction"):
        HumanEvalSource(eval_fraction=1.5).load("train")
    with pytest.raises(ValueError, match="unknown split"):
        HumanEvalSource().load("validation")
    with pytest.raises(ValueError):
        HumanEvalSource(prompt_template="no slot")
    assert len(HumanEvalSource(limit=5).load("test")) == 5


def test_custom_template() -> None:
    task = HumanEvalSource(prompt_template="{question}", limit=1).load("test")[0]
    assert task.prompt == task.reference["prompt"]


# ------------------------------------------------------------------- mbpp


def test_mbpp_sample_loads_with_prompts_and_entry_points() -> None:
    tasks = MbppJsonlSource().load("test")
    assert len(tasks) == 10
    assert [t.task_id for t in tasks[:2]] == ["mbpp/1", "mbpp/2"]
    first = tasks[0]
    assert first.reference["entry_point"] == "count_vowels"
    assert "Your code should pass these tests" in first.prompt and 'count_vowels("hello") == 2' in first.prompt
    hidden = MbppJsonlSource(show_tests=False).load("test")[0]
    assert "assert" not in hidden.prompt


def test_mbpp_sample_reference_solutions_pass_and_wrong_ones_fail(grading_pool: GradingPool) -> None:
    tasks = MbppJsonlSource().load("test")
    grader = CodeGrader()
    right = graded(grading_pool, grader, [(f"```python\n{t.reference['code']}\n```", t.reference) for t in tasks])
    assert [t.task_id for t, r in zip(tasks, right) if not r.correct] == []
    stubs = [f"```python\ndef {t.reference['entry_point']}(*args):\n    return None\n```" for t in tasks]
    wrong = graded(grading_pool, grader, list(zip(stubs, [t.reference for t in tasks])))
    assert not any(r.correct for r in wrong)


def test_mbpp_setup_code_is_used() -> None:
    task = next(t for t in MbppJsonlSource().load("test") if t.reference["test_setup_code"])
    assert "PEOPLE" in task.reference["test_setup_code"] and task.reference["entry_point"] == "older_than"


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("not json", "invalid JSON"),
        ("[1, 2]", "expected an object"),
        ('{"task_id": 1, "test_list": ["assert f(1) == 1"]}', "'text'"),
        ('{"task_id": 1, "text": "t", "test_list": []}', "'test_list'"),
        ('{"task_id": 1, "text": "t", "test_list": ["assert 1 == 1"]}', "which function"),
    ],
)
def test_mbpp_bad_rows_name_the_line(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "tasks.jsonl"
    row = {"task_id": 7, "text": "Add.", "code": "def add(a, b): return a + b", "test_list": ["assert add(1, 2) == 3"]}
    good = json.dumps(row)
    path.write_text(good + "\n\n" + line + "\n")
    with pytest.raises(BadRowError, match=message) as info:
        MbppJsonlSource(path=str(path)).load("test")
    assert f"{path}:3" in str(info.value)


def test_mbpp_id_prefix_and_partition(tmp_path: Path) -> None:
    tasks = MbppJsonlSource(id_prefix="mine", eval_fraction=0.3, seed=1)
    train, held_out = tasks.load("train"), tasks.load("eval")
    assert len(held_out) == 3 and len(train) == 7
    assert all(t.task_id.startswith("mine/") for t in train + held_out)
