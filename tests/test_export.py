"""``selfimprove export`` on a real tiny run: the checkpoint loads with transformers and PEFT, vLLM serves it
for a chat, and the data export reads back through ``datasets`` equal to the run's JSONL files."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import torch

from pipeline.config.settings import parse_config
from pipeline.export.dataset import data_splits
from pipeline.export.model import ExportError, export_model
from pipeline.run.layout import RunDir
from pipeline.system.atomic import read_jsonl
from pipeline.tasks import get_task_source, load_tasks
from tests.helpers.cli_runs import run_cli, serving

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def merged_export(tracked_run: RunDir, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("export") / "model"
    result = run_cli("export", str(tracked_run.root), "-i", "2", "--out", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    return out


@pytest.fixture(scope="module")
def data_export(tracked_run: RunDir, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("export") / "data"
    result = run_cli("export", str(tracked_run.root), "--data", "--out", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    return out


def prompt_ids(tokenizer) -> torch.Tensor:
    messages = [{"role": "user", "content": "What is 3 + 4?"}]
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)[
        "input_ids"
    ]


def test_merged_export_loads_with_transformers_and_holds_iteration_2s_weights(
    merged_export: Path, tracked_run: RunDir, answering_model: Path
) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(merged_export)
    assert tokenizer.chat_template
    exported = AutoModelForCausalLM.from_pretrained(merged_export)
    with torch.no_grad():
        assert exported.generate(prompt_ids(tokenizer), max_new_tokens=4, do_sample=False).shape[1] > 0
    # The weights are iteration 2's adapter folded into the base, in the base's dtype (bfloat16 here).
    base = AutoModelForCausalLM.from_pretrained(answering_model, dtype="auto")
    expected = PeftModel.from_pretrained(base, tracked_run.root / "iter_2" / "train" / "adapter").merge_and_unload()
    untouched = AutoModelForCausalLM.from_pretrained(answering_model, dtype="auto").state_dict()
    weights, merged = exported.state_dict(), expected.state_dict()
    assert weights.keys() == merged.keys()
    assert all(torch.equal(weights[name], merged[name]) for name in weights)
    assert any(not torch.equal(weights[name], untouched[name]) for name in weights)  # the LoRA is in the weights


def test_the_model_card_says_what_was_trained_how_and_how_well(merged_export: Path, tracked_run: RunDir) -> None:
    card = (merged_export / "README.md").read_text()
    assert card.startswith("---\n") and "library_name: transformers" in card and "- rise" in card
    assert str(tracked_run.config.model.name_or_path) in card  # a local base model, named in the text
    assert "selection: all" in card and "learning_rate: 0.001" in card
    for k in (1, 2):
        examples = read_jsonl(tracked_run.root / f"iter_{k}" / "curate" / "train.jsonl")
        assert f"| {k} | {len(examples)} |" in card
    assert "| metric | base | iteration 2 |" in card and "| pass@1 turn 1 |" in card
    assert "selfimprove run config.yaml" in card and f"selfimprove export {tracked_run.root} -i 2" in card


def test_vllm_serves_the_merged_export_for_one_chat(merged_export: Path, tracked_run: RunDir, tmp_path: Path) -> None:
    data = tracked_run.config.model_dump(mode="json")
    data["rollout"]["urls"] = []
    with serving(merged_export, data, tmp_path / "vllm.log") as server:
        response = httpx.post(
            f"{server.url}/v1/chat/completions",
            json={"model": "base", "messages": [{"role": "user", "content": "What is 3 + 4?"}], "max_tokens": 8},
            timeout=120,
        )
    assert response.status_code == 200, response.text
    choice = response.json()["choices"][0]
    assert choice["message"]["role"] == "assistant" and choice["finish_reason"] in ("stop", "length")


def test_adapter_export_loads_with_peft(tracked_run: RunDir, answering_model: Path, tmp_path: Path) -> None:
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = export_model(tracked_run, 1, tmp_path / "adapter", adapter_only=True, command="selfimprove export")
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(answering_model), out)
    trained = load_file(tracked_run.root / "iter_1" / "train" / "adapter" / "adapter_model.safetensors")
    assert load_file(out / "adapter_model.safetensors").keys() == trained.keys()
    assert any("lora_B" in name and p.abs().max() > 0 for name, p in model.named_parameters())
    assert AutoTokenizer.from_pretrained(out).chat_template
    assert "library_name: peft" in (out / "README.md").read_text()


def test_export_refuses_what_it_cannot_make(tracked_run: RunDir, tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="iteration 0 is the base model"):
        export_model(tracked_run, 0, tmp_path / "a")
    with pytest.raises(ExportError, match="iterations 1..2"):
        export_model(tracked_run, 3, tmp_path / "a")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(ExportError, match="not an empty directory"):
        export_model(tracked_run, 1, tmp_path / "full")
    result = run_cli("export", str(tracked_run.root), "--out", str(tmp_path / "b"))
    assert result.returncode == 1 and "--iteration K" in result.stderr


def test_every_split_reads_back_through_load_dataset_equal_to_its_jsonl(data_export: Path, tracked_run: RunDir) -> None:
    from datasets import load_dataset

    splits = data_splits(tracked_run)
    assert {(s.config, s.split) for s in splits} == {
        ("rollouts", "iter_1"),
        ("rollouts", "iter_2"),
        ("curated", "iter_1"),
        ("curated", "iter_2"),
        ("eval", "iter_0"),
        ("eval", "iter_1"),
        ("eval", "iter_2"),
    }
    for split in splits:
        loaded = load_dataset("parquet", data_files=str(data_export / split.path), split="train")
        assert loaded.to_list() == read_jsonl(split.source), split.path
    by_config = load_dataset(str(data_export), "eval")  # through the card's configs metadata
    assert sorted(by_config) == ["iter_0", "iter_1", "iter_2"]
    assert "## `curated`" in (data_export / "README.md").read_text()


def test_exported_tasks_seed_another_run(data_export: Path, tracked_run: RunDir) -> None:
    seeded = parse_config(
        {
            "tasks": {
                "train": {"source": "hf", "options": {"preset": "selfimprove", "dataset": str(data_export)}},
                "eval": {"source": "hf", "options": {"preset": "selfimprove", "dataset": str(data_export)}},
            }
        }
    )
    for split, section in (("train", seeded.tasks.train), ("eval", seeded.tasks.eval)):
        original = load_tasks(getattr(tracked_run.config.tasks, split), split)
        tasks = get_task_source(section.source, **section.options).load(split)
        assert [(t.task_id, t.prompt, t.reference) for t in tasks] == [
            (t.task_id, t.prompt, t.reference) for t in original
        ]
