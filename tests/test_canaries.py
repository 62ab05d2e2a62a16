"""Canaries: the private TRL / transformers internals our trainers override or rely on, checked on the installed libraries.

pyproject.toml pins ``trl`` and ``transformers`` below their next minor
release because of these overrides. When a pin is raised, a failing canary
names the override to re-check and what changed under it. The canaries read
the libraries only (no ``pipeline`` import), so they say whether the library
moved, whatever state our code is in.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers
import trl
from datasets import Dataset
from transformers import Trainer
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from trl import GRPOTrainer, SFTConfig, SFTTrainer

WEIGHTED_SFT = "pipeline/methods/rise/weighted_sft.py WeightedSFTTrainer"
EXIT_GRPO = "pipeline/methods/exit/training.py ExitGRPOTrainer"
VERSIONS = f"(installed: trl {trl.__version__}, transformers {transformers.__version__})"


def parameters(function: Callable[..., Any]) -> list[tuple[str, Any]]:
    """(name, default) of each parameter after ``self``; ``inspect.Parameter.empty`` where there is no default."""
    return [(p.name, p.default) for p in list(inspect.signature(function).parameters.values())[1:]]


def source(function: Callable[..., Any]) -> str:
    return inspect.getsource(function)


def changed(override: str, library_name: str, what: str) -> str:
    """The failure message: which override of ours to re-check, and what moved under it."""
    return f"{override} overrides or relies on {library_name}, {what} {VERSIONS}: re-check the override before raising the pin."


NO_DEFAULT = inspect.Parameter.empty
SIGNATURES = [
    (
        f"{WEIGHTED_SFT}.compute_loss",
        SFTTrainer,
        "compute_loss",
        [("model", NO_DEFAULT), ("inputs", NO_DEFAULT), ("return_outputs", False), ("num_items_in_batch", None)],
    ),
    (
        f"{WEIGHTED_SFT}.get_batch_samples",
        Trainer,
        "get_batch_samples",
        [("epoch_iterator", NO_DEFAULT), ("num_batches", NO_DEFAULT), ("device", NO_DEFAULT)],
    ),
    (f"{WEIGHTED_SFT}._set_signature_columns_if_needed", SFTTrainer, "_set_signature_columns_if_needed", []),
    (
        f"{EXIT_GRPO}._generate_and_score_completions",
        GRPOTrainer,
        "_generate_and_score_completions",
        [("inputs", NO_DEFAULT)],
    ),
    (f"{EXIT_GRPO}._save_checkpoint", GRPOTrainer, "_save_checkpoint", [("model", NO_DEFAULT), ("trial", NO_DEFAULT)]),
    (f"{EXIT_GRPO}._save_checkpoint", Trainer, "_get_output_dir", [("trial", NO_DEFAULT)]),
    (f"{EXIT_GRPO}.log", GRPOTrainer, "log", [("logs", NO_DEFAULT), ("start_time", None)]),
]


@pytest.mark.parametrize(
    ("override", "library_class", "name", "expected"),
    SIGNATURES,
    ids=[f"{c.__name__}.{n}" for _, c, n, _ in SIGNATURES],
)
def test_overridden_methods_keep_their_signatures(
    override: str, library_class: type, name: str, expected: list
) -> None:
    method = getattr(library_class, name, None)
    assert method is not None, changed(override, f"{library_class.__name__}.{name}", "which no longer exists")
    assert parameters(method) == expected, changed(
        override, f"{library_class.__name__}.{name}", f"whose signature changed to {inspect.signature(method)}"
    )


def test_trainer_honours_loss_is_scaled_for_ga() -> None:
    """The weighted loss is already divided by the accumulation window's weight; Trainer must not divide again."""
    assert hasattr(Trainer, "loss_is_scaled_for_ga") and "self.loss_is_scaled_for_ga" in source(
        Trainer.training_step
    ), changed(f"{WEIGHTED_SFT}.__init__", "Trainer.loss_is_scaled_for_ga", "which training_step no longer reads")


def test_checkpoints_are_saved_where_exit_writes_the_buffer() -> None:
    """ExitGRPOTrainer writes the buffer into the checkpoint folder before Trainer fills it."""
    text = source(Trainer._save_checkpoint)
    assert (
        'f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"' in text and "self._get_output_dir(trial=trial)" in text
    ), changed(
        f"{EXIT_GRPO}._save_checkpoint",
        "Trainer._save_checkpoint",
        f"which no longer saves to _get_output_dir(trial)/{PREFIX_CHECKPOINT_DIR}-<step>",
    )


def test_grpo_hands_the_rollout_fields_to_the_advantages() -> None:
    """ExitGRPOTrainer scales ``output["advantages"]`` by a field its rollout_func returned, which TRL merges into ``inputs``."""
    assert "rollout_func" in inspect.signature(
        GRPOTrainer.__init__
    ).parameters and "self.rollout_func = rollout_func" in source(GRPOTrainer.__init__), changed(
        f"{EXIT_GRPO}.log / _save_checkpoint",
        "GRPOTrainer(rollout_func=...)",
        "which is no longer taken or kept as self.rollout_func",
    )
    text = source(GRPOTrainer._generate_and_score_completions)
    assert "inp[key] = values[i]" in text, changed(
        f"{EXIT_GRPO}._generate_and_score_completions",
        "GRPOTrainer._generate_and_score_completions",
        "which no longer merges rollout_func's extra fields into inputs",
    )
    assert '"advantages": advantages' in text, changed(
        f"{EXIT_GRPO}._generate_and_score_completions",
        "GRPOTrainer._generate_and_score_completions",
        'whose output no longer has "advantages"',
    )


@pytest.fixture(scope="module")
def sft_trainer(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> SFTTrainer:
    """Plain TRL SFTTrainer on the tiny model with prompt-completion rows, as the weighted trainer builds it."""
    rows = [
        {
            "prompt": [{"role": "user", "content": f"What is {i} + 4?"}],
            "completion": [{"role": "assistant", "content": f"\\boxed{{{i + 4}}}"}],
        }
        for i in range(2)
    ]
    args = SFTConfig(
        output_dir=str(tmp_path_factory.mktemp("canary")),
        per_device_train_batch_size=2,
        report_to=[],
        use_cpu=True,
        bf16=False,
    )
    return SFTTrainer(model=str(tiny_model), args=args, train_dataset=Dataset.from_list(rows))


def test_sft_loss_reads_the_fused_head_outputs(sft_trainer: SFTTrainer) -> None:
    """WeightedSFTTrainer.compute_loss takes the first forward's ``log_probs`` and ``label_mask`` (per token,
    zero where no loss) and rebuilds the loss from them: TRL's plain NLL must be exactly that forward's mean."""
    override = f"{WEIGHTED_SFT}.compute_loss"
    batch = sft_trainer.data_collator([sft_trainer.train_dataset[i] for i in range(2)])
    calls: list[tuple[dict, Any]] = []

    def forward(**kwargs: Any) -> Any:
        outputs = sft_trainer.model(**kwargs)
        calls.append((kwargs, outputs))
        return outputs

    with torch.no_grad():
        loss = sft_trainer.compute_loss(forward, dict(batch))
    assert len(calls) == 1 and calls[0][0].get("fused_lm_head") is True, changed(
        override,
        "SFTTrainer.compute_loss",
        f"which no longer calls the model once with fused_lm_head=True ({len(calls)} calls)",
    )
    outputs = calls[0][1]
    assert hasattr(outputs, "log_probs") and hasattr(outputs, "label_mask"), changed(
        override, "SFTTrainer's fused LM head", "whose outputs no longer carry log_probs and label_mask"
    )
    rows = len(batch["input_ids"])
    assert (
        outputs.log_probs.dim() == 2
        and outputs.log_probs.shape == outputs.label_mask.shape
        and len(outputs.log_probs) == rows
    ), changed(
        override,
        "SFTTrainer's fused LM head",
        "whose log_probs / label_mask are no longer one row per example, one value per token",
    )
    assert bool((outputs.log_probs[outputs.label_mask == 0] == 0).all()), changed(
        override, "SFTTrainer's fused LM head", "whose log_probs are no longer zero where there is no loss"
    )
    expected = -outputs.log_probs.sum() / outputs.label_mask.sum()
    assert torch.allclose(loss, expected), changed(
        override, "SFTTrainer.compute_loss", "whose NLL is no longer the token mean of log_probs"
    )


def test_batch_samples_and_signature_columns(sft_trainer: SFTTrainer) -> None:
    """get_batch_samples gives one optimizer step's micro-batches; _signature_columns is the list the weight column joins."""
    batches, _ = sft_trainer.get_batch_samples(iter(sft_trainer.get_train_dataloader()), 1, torch.device("cpu"))
    assert isinstance(batches, list) and len(batches) == 1 and "input_ids" in batches[0], changed(
        f"{WEIGHTED_SFT}.get_batch_samples",
        "Trainer.get_batch_samples",
        "which no longer returns (list of micro-batches, item count)",
    )
    sft_trainer._signature_columns = None
    sft_trainer._set_signature_columns_if_needed()
    assert isinstance(sft_trainer._signature_columns, list), changed(
        f"{WEIGHTED_SFT}._set_signature_columns_if_needed",
        "SFTTrainer._signature_columns",
        "which is no longer a list of column names",
    )
