"""The compact LM head computes what TRL's fused head computes, on the tiny model, in the forward and the backward."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM
from trl.trainer.utils import add_fused_lm_head

from pipeline.config.settings import TrainingSection
from pipeline.methods.rise import weighted_sft
from pipeline.methods.rise.method import RiseMethod
from pipeline.methods.rise.weighted_sft import SFT_OUTPUTS, WEIGHT, build_trainer
from pipeline.training.lm_head import add_compact_lm_head, compact_head_applies

OUTPUTS = ("log_probs", "entropy", "is_top1")


def _batch(vocab: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Two padded rows whose labels cover only part of each (a prompt and padding carry -100), one with no label."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, vocab, (3, 12), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 9:] = 0
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    labels[:, :5] = -100
    labels[2] = -100
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def _forward_and_grads(model: torch.nn.Module, batch: dict, temperature: float) -> tuple[object, list[torch.Tensor]]:
    model.zero_grad()
    outputs = model(**batch, fused_lm_head=True)
    (outputs.loss + outputs.entropy.sum() * 0.1).backward()  # the entropy's gradient too (GRPO's bonus uses it)
    return outputs, [p.grad.clone() for p in model.parameters() if p.grad is not None]


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_compact_head_matches_trls_fused_head(tiny_model: Path, temperature: float) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    batch = _batch(model.config.vocab_size)
    add_fused_lm_head(model, temperature=temperature, outputs=OUTPUTS)
    assert compact_head_applies(model, OUTPUTS)
    trl_out, trl_grads = _forward_and_grads(model, batch, temperature)
    add_compact_lm_head(model, temperature=temperature, outputs=OUTPUTS)
    ours, our_grads = _forward_and_grads(model, batch, temperature)

    assert torch.equal(ours.label_mask, trl_out.label_mask)
    for field in ("loss", "log_probs", "entropy"):
        torch.testing.assert_close(getattr(ours, field), getattr(trl_out, field), atol=1e-5, rtol=1e-5)
    assert torch.equal(ours.is_top1, trl_out.is_top1)
    assert ours.log_probs[2].abs().sum() == 0 and ours.log_probs[0, 5:].ne(0).all()  # zero where unlabelled
    assert len(our_grads) == len(trl_grads) > 0
    for got, want in zip(our_grads, trl_grads):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    # Without fused_lm_head the model is the original one: full logits.
    assert model(input_ids=batch["input_ids"]).logits.shape[-1] == model.config.vocab_size


def test_models_whose_logits_are_transformed_keep_trls_head(tiny_model: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    assert not compact_head_applies(model, ("log_probs", "mean_logits"))  # an output it does not compute
    model.config.final_logit_softcapping = 30.0
    assert not compact_head_applies(model, OUTPUTS)


def _rows() -> list[dict]:
    targets = ("The answer is \\boxed{7}.", "I think it is \\boxed{12345}, because eleven.")
    return [
        {
            "prompt": [{"role": "user", "content": f"What is {i} + 4?" + " Think." * (i % 3)}],
            "completion": [{"role": "assistant", "content": targets[i % 2]}],
            WEIGHT: float(1 + i % 3),
        }
        for i in range(8)
    ]


def _losses(tiny_model: Path, out: Path) -> tuple[list[float], bool]:
    settings = TrainingSection(lora_dropout=0.0, per_device_batch_size=4, learning_rate=1e-2, save_steps=100)
    trainer = build_trainer(
        tiny_model, Dataset.from_list(_rows()), out, settings, RiseMethod(), use_cpu=True, max_steps=6
    )
    trainer.args.save_strategy = "no"
    trainer.args.logging_steps = 1
    trainer.train()
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry], trainer.compact_lm_head


@pytest.mark.slow
def test_training_on_the_cpu_takes_the_compact_head_and_learns_as_trls_does(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ours, compact = _losses(tiny_model, tmp_path / "ours")
    # TRL's own head: the trainer skips installing the compact one.
    monkeypatch.setattr(weighted_sft, "use_compact_lm_head", lambda trainer, outputs: False)
    trls, trl_compact = _losses(tiny_model, tmp_path / "trl")
    assert compact and not trl_compact
    assert len(ours) == len(trls) == 6 and ours[-1] < ours[0]
    assert ours == pytest.approx(trls, rel=1e-4, abs=1e-5)
    assert set(SFT_OUTPUTS) == set(OUTPUTS)


@pytest.mark.slow
def test_bf16_training_on_the_cpu_keeps_a_float32_loss(tiny_model: Path, tmp_path: Path) -> None:
    """training.mixed_precision bf16 on the CPU (auto picks it where the CPU computes bfloat16 natively)."""
    settings = TrainingSection(lora_dropout=0.0, per_device_batch_size=4, learning_rate=1e-2)
    trainer = build_trainer(
        tiny_model, Dataset.from_list(_rows()), tmp_path, settings, RiseMethod(), use_cpu=True, bf16=True, max_steps=2
    )
    trainer.args.save_strategy = "no"
    assert trainer.compact_lm_head and trainer.args.bf16
    batch = next(iter(trainer.get_train_dataloader()))
    with trainer.compute_loss_context_manager():
        outputs = trainer.model(**{k: batch[k] for k in ("input_ids", "attention_mask", "labels")}, fused_lm_head=True)
    assert outputs.log_probs.dtype == torch.float32 and outputs.loss.dtype == torch.float32
    assert torch.isfinite(torch.tensor(trainer.train().training_loss))
