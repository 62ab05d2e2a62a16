"""Task sources: arithmetic generator, JSONL files, Hugging Face datasets (local only)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.tasks import Task, get_task_source, task_source_names
from pipeline.tasks.arithmetic import KINDS, WORD_TEMPLATES
from pipeline.tasks.rows import BadRowError, boxed_answer, gsm8k_answer, wrap_prompt

REPO = Path(__file__).resolve().parents[1]


def test_sources_are_registered() -> None:
    assert {"arithmetic", "jsonl", "hf"} <= set(task_source_names())


# ---------------------------------------------------------------- arithmetic


def arithmetic(**options: object) -> dict[str, list[Task]]:
    source = get_task_source("arithmetic", **options)
    return {split: source.load(split) for split in ("train", "eval")}


def canonical(task: Task) -> tuple:
    """The problem itself: operand order does not matter for + and *."""
    operands = task.metadata["operands"]
    if task.metadata["kind"].startswith("word"):
        return (task.metadata["kind"], task.metadata["template"], tuple(operands))
    return (task.metadata["kind"], tuple(sorted(operands)))


def test_arithmetic_is_deterministic_and_seeded() -> None:
    first, again = arithmetic(seed=3, n_train=30, n_eval=12), arithmetic(seed=3, n_train=30, n_eval=12)
    assert first == again
    other = arithmetic(seed=4, n_train=30, n_eval=12)
    assert [t.task_id for t in other["train"]] != [t.task_id for t in first["train"]]


def test_arithmetic_counts_kinds_and_interleaving() -> None:
    tasks = arithmetic(kinds=["add2", "mul2x2", "word2"], n_train=8, n_eval=4)
    assert len(tasks["train"]) == 8 and len(tasks["eval"]) == 4
    assert [t.metadata["kind"] for t in tasks["train"]] == ["add2", "mul2x2", "word2"] * 2 + ["add2", "mul2x2"]
    for split in tasks.values():
        assert len({t.task_id for t in split}) == len(split)
        assert len({canonical(t) for t in split}) == len(split)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_arithmetic_answers_are_right(kind: str) -> None:
    for task in arithmetic(kinds=[kind], n_train=40, n_eval=10)["train"]:
        operands = task.metadata["operands"]
        if kind.startswith("add"):
            expected = sum(operands)
        elif kind.startswith("mul"):
            expected = operands[0] * operands[1]
        else:
            text, _, solve = WORD_TEMPLATES[kind][task.metadata["template"]]
            expected = solve(*operands)
            assert text.format(*operands) in task.prompt
        assert task.reference == str(expected) and expected > 0
        assert "\\boxed{}" in task.prompt


def test_arithmetic_splits_never_overlap_for_any_seeds() -> None:
    # mul1x2 has only 720 problems, so its splits are nearly exhausted here.
    kinds = ["add2", "mul1x2", "word2", "word3"]
    train, eval_ = set(), set()
    for seed in range(4):
        tasks = arithmetic(seed=seed, kinds=kinds, n_train=600, n_eval=240)
        train |= {canonical(t) for t in tasks["train"]}
        eval_ |= {canonical(t) for t in tasks["eval"]}
    assert train and eval_ and not train & eval_


def test_arithmetic_eval_size_does_not_change_train() -> None:
    small, large = arithmetic(n_train=20, n_eval=5), arithmetic(n_train=20, n_eval=50)
    assert small["train"] == large["train"]
    assert {t.task_id for t in small["eval"]} <= {t.task_id for t in large["eval"]}


def test_arithmetic_reports_an_exhausted_kind() -> None:
    with pytest.raises(ValueError, match="only .* distinct 'mul1x2' problems"):
        get_task_source("arithmetic", kinds=["mul1x2"], n_eval=400).load("eval")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"kinds": ["add9"]}, "subset"),
        ({"kinds": []}, "subset"),
        ({"eval_fraction": 1.0}, "eval_fraction"),
        ({"prompt_template": "no slot"}, "question"),
    ],
)
def test_arithmetic_rejects_bad_options(options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        get_task_source("arithmetic", **options)


def test_unknown_split_is_an_error() -> None:
    with pytest.raises(ValueError, match="not 'test'"):
        get_task_source("arithmetic").load("test")


def test_task_ids_are_stable_across_processes(tmp_path: Path) -> None:
    """Ids must not depend on Python's per-process hash seed."""
    data = tmp_path / "t.jsonl"
    data.write_text('{"prompt": "What is 2+2?", "answer": 4}\n')
    script = (
        "import json; from pipeline.tasks import get_task_source as g;"
        "a = g('arithmetic', seed=5, n_train=6, n_eval=3);"
        f"j = g('jsonl', train_path={str(data)!r});"
        "print(json.dumps([t.to_dict() for t in a.load('train') + a.load('eval') + j.load('train')]))"
    )
    outputs = []
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed, "PYTHONPATH": str(REPO)}
        run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
        outputs.append(json.loads(run.stdout))
    assert outputs[0] == outputs[1]
    here = arithmetic(seed=5, n_train=6, n_eval=3)
    assert [Task.from_dict(d) for d in outputs[0][:9]] == here["train"] + here["eval"]


# ---------------------------------------------------------------- shared row helpers


def test_boxed_answer() -> None:
    assert boxed_answer("so \\boxed{3} then \\boxed{\\frac{1}{2}}.") == "\\frac{1}{2}"
    assert boxed_answer("\\boxed{ \\{1, 2\\} }") == "\\{1, 2\\}"
    assert boxed_answer("\\boxed{x^{2}+\\sqrt{y_{1}}}") == "x^{2}+\\sqrt{y_{1}}"
    assert boxed_answer("answer: \\fbox{7}") == "7"
    assert boxed_answer("so $\\boxed 5$.") == "5"
    assert boxed_answer("\\boxed{unclosed") is None
    assert boxed_answer("\\boxed{ }") is None
    assert boxed_answer("no box") is None


def test_gsm8k_answer() -> None:
    assert gsm8k_answer("Work: 1,000 + 234 = <<1000+234=1234>>1234\n#### 1,234") == "1234"
    assert gsm8k_answer("#### -5") == "-5"
    assert gsm8k_answer("no marker") is None
    assert gsm8k_answer("#### ") is None


def test_wrap_prompt_keeps_braces() -> None:
    assert wrap_prompt("Is {x} \\{1\\}?", "Q: {question} A in \\boxed{}") == "Q: Is {x} \\{1\\}? A in \\boxed{}"


# ---------------------------------------------------------------- jsonl


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def test_jsonl_defaults(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "train.jsonl",
        [
            json.dumps({"prompt": "What is 2+2?", "answer": 4, "level": 1}),
            "",
            json.dumps({"prompt": "Name a prime.", "answer": "7"}),
        ],
    )
    tasks = get_task_source("jsonl", train_path=str(path)).load("train")
    assert [t.reference for t in tasks] == ["4", "7"]
    assert tasks[0].prompt == wrap_prompt("What is 2+2?")
    assert tasks[0].metadata == {"level": 1, "line": 1}
    assert tasks[1].metadata == {"line": 3}
    assert all(t.task_id.startswith("jsonl-") for t in tasks)


def test_jsonl_ids_follow_content_not_position(tmp_path: Path) -> None:
    rows = [json.dumps({"prompt": f"q{i}", "answer": str(i)}) for i in range(3)]
    forward = get_task_source("jsonl", train_path=str(write_lines(tmp_path / "a.jsonl", rows))).load("train")
    backward = get_task_source("jsonl", train_path=str(write_lines(tmp_path / "b.jsonl", rows[::-1]))).load("train")
    assert {t.task_id for t in forward} == {t.task_id for t in backward}
    assert len({t.task_id for t in forward}) == 3


def test_jsonl_field_mapping_ids_template_extractor_and_limit(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "eval.jsonl",
        [
            json.dumps({"uid": "p1", "question": "Q1", "solution": "x\n#### 1,500"}),
            json.dumps({"uid": "p2", "question": "Q2", "solution": "y\n#### 2"}),
        ],
    )
    source = get_task_source(
        "jsonl",
        eval_path=str(path),
        prompt_field="question",
        answer_field="solution",
        id_field="uid",
        answer_extractor="gsm8k",
        prompt_template="{question}",
        limit=1,
    )
    assert source.load("eval") == [Task("p1", "Q1", "1500", {"line": 1})]
    with pytest.raises(ValueError, match="no train_path"):
        source.load("train")


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("{not json", "invalid JSON"),
        ("[1, 2]", "expected an object, got list"),
        (json.dumps({"answer": "3"}), "'prompt' is missing"),
        (json.dumps({"prompt": "   ", "answer": "3"}), "'prompt' is missing"),
        (json.dumps({"prompt": "q"}), "'answer' is missing"),
        ('{"prompt": "q", "answer": NaN}', "'answer' is 'nan', not a finite number"),
        ('{"prompt": "q", "answer": -Infinity}', "'answer' is '-inf', not a finite number"),
        (json.dumps({"prompt": "q", "answer": "NaN"}), "'answer' is 'NaN', not a finite number"),
        (json.dumps({"prompt": "q", "answer": ""}), "'answer' is an empty answer"),
        (json.dumps({"prompt": "q", "answer": " \t"}), "'answer' is an empty answer"),
    ],
)
def test_jsonl_bad_row_errors_name_file_and_line(tmp_path: Path, line: str, problem: str) -> None:
    path = write_lines(tmp_path / "bad.jsonl", [json.dumps({"prompt": "ok", "answer": "1"}), line])
    with pytest.raises(BadRowError, match=f"bad.jsonl:2: .*{problem}"):
        get_task_source("jsonl", train_path=str(path)).load("train")


def test_jsonl_skip_bad_rows_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rows = ["{oops", json.dumps({"prompt": "ok", "answer": "1"}), json.dumps({"prompt": "q"})]
    path = write_lines(tmp_path / "bad.jsonl", rows)
    with caplog.at_level(logging.WARNING):
        tasks = get_task_source("jsonl", train_path=str(path), skip_bad_rows=True).load("train")
    assert [t.reference for t in tasks] == ["1"]
    assert "bad.jsonl:1: invalid JSON" in caplog.text and "bad.jsonl:3:" in caplog.text


def test_jsonl_duplicates(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    same = json.dumps({"prompt": "q", "answer": "1"})
    path = write_lines(tmp_path / "dup.jsonl", [same, same])
    with caplog.at_level(logging.WARNING):
        assert len(get_task_source("jsonl", train_path=str(path)).load("train")) == 1
    assert "duplicate" in caplog.text
    clash = write_lines(
        tmp_path / "clash.jsonl",
        [
            json.dumps({"id": "a", "prompt": "q1", "answer": "1"}),
            json.dumps({"id": "a", "prompt": "q2", "answer": "2"}),
        ],
    )
    with pytest.raises(BadRowError, match="clash.jsonl:2: task id 'a' already used by .*clash.jsonl:1"):
        get_task_source("jsonl", train_path=str(clash), id_field="id").load("train")


def test_jsonl_needs_a_path_and_a_known_extractor() -> None:
    with pytest.raises(ValueError, match="train_path and/or eval_path"):
        get_task_source("jsonl")
    with pytest.raises(ValueError, match="unknown answer_extractor"):
        get_task_source("jsonl", train_path="x.jsonl", answer_extractor="last_number")


# ---------------------------------------------------------------- hf (local datasets only)

GSM8K_ROWS = {
    "train": [
        {"question": "Tom has 1,000 apples and buys 200. How many?", "answer": "1000+200=1200\n#### 1,200"},
        {"question": "What is 3 times 4?", "answer": "3*4=12\n#### 12"},
    ],
    "test": [{"question": "What is 10 minus 3?", "answer": "10-3=7\n#### 7"}],
}
ALGEBRA = {"level": "Level 1", "type": "Algebra"}
MATH_ROWS = {
    "train": [{"problem": "Simplify $\\frac{2}{4}$.", "solution": "It is $\\boxed{\\frac{1}{2}}$.", **ALGEBRA}],
    "test": [
        {"problem": "Compute $2^{10}$.", "solution": "First \\boxed{2}, then $2^{10} = \\boxed{1024}$.", **ALGEBRA},
        {"problem": "No box here.", "solution": "The answer is 3.", **ALGEBRA},
    ],
}


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    """No downloads: offline mode for datasets and the hub; a private cache dir."""
    import datasets
    import huggingface_hub.constants

    for variable in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.setenv(variable, "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return str(tmp_path / "hf-cache")


def test_hf_gsm8k_preset_on_a_local_jsonl_directory(tmp_path: Path, offline: str) -> None:
    directory = tmp_path / "gsm8k"
    directory.mkdir()
    for split, rows in GSM8K_ROWS.items():
        write_lines(directory / f"{split}.jsonl", [json.dumps(r) for r in rows])
    source = get_task_source("hf", preset="gsm8k", dataset=str(directory), config=None, cache_dir=offline)
    train, eval_ = source.load("train"), source.load("eval")
    assert [t.reference for t in train] == ["1200", "12"]
    assert [t.reference for t in eval_] == ["7"]
    assert train[0].prompt == wrap_prompt(GSM8K_ROWS["train"][0]["question"])
    assert train[0].task_id.startswith("gsm8k-") and train[0].metadata == {"split": "train", "row": 0}
    assert eval_[0].metadata["split"] == "test"
    assert [t.task_id for t in source.load("train")] == [t.task_id for t in train]
    limited = get_task_source("hf", preset="gsm8k", dataset=str(directory), config=None, cache_dir=offline, limit=1)
    assert len(limited.load("train")) == 1


def test_hf_math_preset_on_local_parquet_files(tmp_path: Path, offline: str) -> None:
    import datasets

    directory = tmp_path / "math"
    (directory / "data").mkdir(parents=True)
    for split, rows in MATH_ROWS.items():
        datasets.Dataset.from_list(rows).to_parquet(str(directory / "data" / f"{split}-00000-of-00001.parquet"))
    source = get_task_source("hf", preset="math", dataset=str(directory), config=None, cache_dir=offline)
    assert source.options.answer_field == "solution"
    [train] = source.load("train")
    assert train.reference == "\\frac{1}{2}"
    assert train.metadata == {"level": "Level 1", "type": "Algebra", "split": "train", "row": 0}
    with pytest.raises(BadRowError, match="row 1: answer_extractor 'boxed' found no answer"):
        source.load("eval")
    skipping = get_task_source(
        "hf", preset="math", dataset=str(directory), config=None, cache_dir=offline, skip_bad_rows=True
    )
    assert [t.reference for t in skipping.load("eval")] == ["1024"]


def test_hf_saved_dataset_dict_uses_load_from_disk(tmp_path: Path, offline: str) -> None:
    import datasets

    saved = tmp_path / "saved"
    datasets.DatasetDict({s: datasets.Dataset.from_list(r) for s, r in GSM8K_ROWS.items()}).save_to_disk(str(saved))
    source = get_task_source(
        "hf",
        dataset=str(saved),
        prompt_field="question",
        answer_field="answer",
        answer_extractor="gsm8k",
        eval_split="test",
    )
    assert [t.reference for t in source.load("eval")] == ["7"]
    assert source.load("train")[0].task_id.startswith("saved-")
    with pytest.raises(ValueError, match="no split 'validation'; it has train, test"):
        source.load("validation")
    with pytest.raises(ValueError, match="has no configs"):
        get_task_source("hf", dataset=str(saved), config="main").load("train")


def test_hf_single_saved_dataset_is_refused(tmp_path: Path, offline: str) -> None:
    import datasets

    single = tmp_path / "single"
    datasets.Dataset.from_list(GSM8K_ROWS["train"]).save_to_disk(str(single))
    with pytest.raises(ValueError, match="single Dataset without split names"):
        get_task_source("hf", dataset=str(single), prompt_field="question").load("train")


def test_hf_presets_and_explicit_overrides() -> None:
    source = get_task_source("hf", preset="gsm8k", prompt_field="q", limit=5)
    assert source.options.dataset == "openai/gsm8k" and source.options.config == "main"
    assert source.options.prompt_field == "q" and source.options.answer_extractor == "gsm8k"
    assert get_task_source("hf", preset="gsm8k", answer_extractor=None).options.answer_extractor is None
    assert len(get_task_source("hf", preset="math").options.configs) == 7
    with pytest.raises(ValueError, match="unknown hf preset"):
        get_task_source("hf", preset="gsm9k")
    with pytest.raises(ValueError, match="unknown hf task source option"):
        get_task_source("hf", preset="gsm8k", field="x")
    with pytest.raises(ValueError, match="needs `dataset`"):
        get_task_source("hf")
