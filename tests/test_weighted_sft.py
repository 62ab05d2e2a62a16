"""WeightedSFTTrainer on the tiny model with real TRL: the loss, its gradients, and the weight column's path."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from transformers.training_args import OptimizerNames

from pipeline.config.settings import TrainingSection
from pipeline.methods.rise.method import RiseMethod
from pipeline.methods.rise.weighted_sft import WEIGHT, WeightedSFTTrainer, build_trainer
from pipeline.training.checkpoints import last_checkpoint, train

TARGETS = ("The answer is \\boxed{7}.", "I think it is \\boxed{12345}, because eleven.")


def _row(target: str, weight: float, question: str = "What is 3 + 4?") -> dict:
    return {
        "prompt": [{"role": "user", "content": question}],
        "completion": [{"role": "assistant", "content": target}],
        WEIGHT: weight,
    }


def _trainer(tiny_model: Path, tmp_path: Path, rows: list[dict], **overrides) -> WeightedSFTTrainer:
    settings = TrainingSection(
        lora_dropout=0.0,
        per_device_batch_size=len(rows),
        learning_rate=overrides.pop("learning_rate", 1e-3),
    )
    method = RiseMethod(loss_normalization=overrides.pop("loss_normalization", "weights"))
    trainer = build_trainer(
        tiny_model, Dataset.from_list(rows), tmp_path / "out", settings, method, use_cpu=True, **overrides
    )
    trainer.args.save_strategy = "no"
    return trainer


def _batch(trainer: WeightedSFTTrainer, indices: list[int], weights: list[float]) -> dict:
    """A collated batch of the tokenized training rows ``indices`` with the given weights."""
    examples = [dict(trainer.train_dataset[i], **{WEIGHT: w}) for i, w in zip(indices, weights)]
    return trainer.data_collator(examples)


def _completion_nll(model: torch.nn.Module, batch: dict) -> torch.Tensor:
    """Per-example mean NLL over the completion tokens, from full logits (independent of TRL's fused head)."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].float()
    labels = batch["labels"][:, 1:]
    mask = labels != -100
    logp = torch.log_softmax(logits, dim=-1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return -(logp * mask).sum(-1) / mask.sum(-1)


def _lora_grads(trainer: WeightedSFTTrainer, batch: dict) -> list[torch.Tensor]:
    trainer.model.zero_grad()
    trainer.compute_loss(trainer.model, batch).backward()
    grads = [p.grad.clone() for n, p in trainer.model.named_parameters() if "lora_" in n]
    assert grads
    return grads


@pytest.fixture
def pair_trainer(tiny_model: Path, tmp_path: Path) -> WeightedSFTTrainer:
    return _trainer(tiny_model, tmp_path, [_row(TARGETS[0], 1.0), _row(TARGETS[1], 1.0)])


def _loss_and_nll(trainer: WeightedSFTTrainer, weights: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """The trainer's loss on the two training rows with ``weights``, and their per-example NLLs computed independently."""
    batch = _batch(trainer, [0, 1], weights)
    model = trainer.model.eval()
    with torch.no_grad():
        return trainer.compute_loss(model, batch), _completion_nll(model, batch)


def test_loss_is_weighted_mean_of_per_example_nll(pair_trainer: WeightedSFTTrainer) -> None:
    weights = [0.25, 2.0]
    loss, per_example = _loss_and_nll(pair_trainer, weights)
    w = torch.tensor(weights)
    assert per_example[0] != pytest.approx(per_example[1].item(), rel=1e-3)
    assert loss.item() == pytest.approx(((w * per_example).sum() / w.sum()).item(), abs=1e-5)


def test_reference_normalization_is_the_plain_mean_of_weighted_losses(tiny_model: Path, tmp_path: Path) -> None:
    """RISE's reference code: mean_i w_i L_i, which scales with the weights (ours divides by sum w_i)."""
    trainer = _trainer(tiny_model, tmp_path, [_row(TARGETS[0], 1.0), _row(TARGETS[1], 1.0)], loss_normalization="mean")
    loss, per_example = _loss_and_nll(trainer, [0.25, 2.0])
    assert loss.item() == pytest.approx((0.25 * per_example[0] + 2.0 * per_example[1]).item() / 2, abs=1e-5)


def test_zero_weight_example_contributes_no_gradient(pair_trainer: WeightedSFTTrainer) -> None:
    pair_trainer.model.train()
    with_b = _lora_grads(pair_trainer, _batch(pair_trainer, [0, 1], [1.0, 0.0]))
    alone = _lora_grads(pair_trainer, _batch(pair_trainer, [0], [1.0]))
    for got, want in zip(with_b, alone):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-4)
    only_b = _batch(pair_trainer, [1], [0.0])
    assert pair_trainer.compute_loss(pair_trainer.model, only_b).item() == 0.0
    assert all(torch.equal(g, torch.zeros_like(g)) for g in _lora_grads(pair_trainer, only_b))


def test_accumulation_window_matches_one_big_batch(tiny_model: Path, tmp_path: Path) -> None:
    rows = [_row(TARGETS[i % 2], w, f"What is {i} + 4?") for i, w in enumerate([1.0, 3.0, 0.5, 0.0])]
    trainer = _trainer(tiny_model, tmp_path, rows)
    trainer.model.train()
    weights = [row[WEIGHT] for row in rows]
    big = _lora_grads(trainer, _batch(trainer, [0, 1, 2, 3], weights))
    micro = [_batch(trainer, [0, 1], weights[:2]), _batch(trainer, [2, 3], weights[2:])]
    trainer.get_batch_samples(iter(micro), 2, torch.device("cpu"))
    summed = [sum(parts) for parts in zip(*(_lora_grads(trainer, batch) for batch in micro))]
    for got, want in zip(summed, big):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-4)


def test_weight_column_survives_tokenization_and_collation(pair_trainer: WeightedSFTTrainer) -> None:
    batch = next(iter(pair_trainer.get_train_dataloader()))
    assert sorted(batch[WEIGHT].tolist()) == [1.0, 1.0]
    assert (batch["labels"] != -100).sum() < batch["attention_mask"].sum()  # the prompt carries no loss


def _nll_after_training(tiny_model: Path, tmp_path: Path, weights: tuple[float, float]) -> torch.Tensor:
    trainer = _trainer(
        tiny_model, tmp_path, [_row(t, w) for t, w in zip(TARGETS, weights)], learning_rate=1e-2, max_steps=8
    )
    trainer.train()
    with torch.no_grad():
        return _completion_nll(trainer.model.eval(), _batch(trainer, [0, 1], [1.0, 1.0]))


@pytest.mark.slow
def test_weights_choose_what_is_learned(tiny_model: Path, tmp_path: Path) -> None:
    first = _nll_after_training(tiny_model, tmp_path / "a", (1.0, 0.0))
    second = _nll_after_training(tiny_model, tmp_path / "b", (0.0, 1.0))
    assert first[0] < second[0] and second[1] < first[1]


def test_rejects_packing_and_bad_weights(tiny_model: Path, tmp_path: Path) -> None:
    from trl import SFTConfig

    args = SFTConfig(output_dir=str(tmp_path), packing=True, use_cpu=True, report_to=[])
    with pytest.raises(ValueError, match="packing"):
        WeightedSFTTrainer(str(tiny_model), args, Dataset.from_list([_row(TARGETS[0], 1.0)]))
    with pytest.raises(ValueError, match="non-negative"):
        _trainer(tiny_model, tmp_path, [_row(TARGETS[0], -1.0)])


def _lora_after_one_step(tiny_model: Path, tmp_path: Path, batch_size: int, grad_accum: int) -> list[torch.Tensor]:
    rows = [_row(TARGETS[i % 2], w, f"What is {i} + 4?") for i, w in enumerate([1.0, 3.0, 0.5, 0.0])]
    settings = TrainingSection(
        lora_dropout=0.0, per_device_batch_size=batch_size, gradient_accumulation_steps=grad_accum, learning_rate=1e-2
    )
    trainer = build_trainer(
        tiny_model, Dataset.from_list(rows), tmp_path, settings, RiseMethod(), use_cpu=True, max_steps=1
    )
    trainer.args.save_strategy = "no"
    # SGD moves each weight by lr x its gradient, so the weights compare the gradients themselves; Adam's
    # first step is about lr x sign(gradient), which turns float noise in a near-zero gradient into a
    # difference of lr (seen with the suite in two processes: 6.5e-6 on 1 of 2048 elements).
    trainer.args.optim = OptimizerNames.SGD
    trainer.train()
    return [p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_" in n]


@pytest.mark.slow
def test_training_with_accumulation_equals_one_big_batch(tiny_model: Path, tmp_path: Path) -> None:
    big = _lora_after_one_step(tiny_model, tmp_path / "big", batch_size=4, grad_accum=1)
    accumulated = _lora_after_one_step(tiny_model, tmp_path / "acc", batch_size=2, grad_accum=2)
    for got, want in zip(accumulated, big):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-4)


@pytest.mark.slow
def test_train_saves_adapter_and_resumes_from_last_checkpoint(tiny_model: Path, tmp_path: Path) -> None:
    rows = [_row(TARGETS[0], 1.0), _row(TARGETS[1], 2.0)]
    settings = TrainingSection(per_device_batch_size=1, save_steps=1)

    def fresh() -> WeightedSFTTrainer:
        return build_trainer(
            tiny_model, Dataset.from_list(rows), tmp_path / "out", settings, RiseMethod(), use_cpu=True, max_steps=2
        )

    final = train(fresh(), tmp_path / "adapter")
    assert (final / "adapter_config.json").is_file()
    assert (tmp_path / "out" / "checkpoint-2").is_dir()
    shutil.rmtree(tmp_path / "out" / "checkpoint-1")
    resumed = fresh()
    train(resumed, tmp_path / "adapter")
    assert resumed.state.global_step == 2
    assert not (tmp_path / "out" / "checkpoint-1").exists()  # continued from step 2, did not start over


def test_last_checkpoint_is_the_newest_complete_one(tmp_path: Path) -> None:
    for step, state in [(2, "{}"), (10, "{}"), (12, '{"global_st')]:  # 12: killed while writing its state
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text(state)
    (tmp_path / "checkpoint-14").mkdir()  # killed before writing its state
    assert last_checkpoint(tmp_path) == str(tmp_path / "checkpoint-10")
    assert last_checkpoint(tmp_path / "missing") is None


def test_qlora_loads_the_base_in_4bit_and_trains_only_lora(tiny_model: Path, tmp_path: Path) -> None:
    import bitsandbytes as bnb

    settings = TrainingSection(finetune="qlora", lora_dropout=0.0, per_device_batch_size=2)
    rows = [_row(TARGETS[0], 1.0), _row(TARGETS[1], 2.0)]
    trainer = build_trainer(
        tiny_model, Dataset.from_list(rows), tmp_path / "out", settings, RiseMethod(), use_cpu=True, max_steps=2
    )
    trainer.args.save_strategy = "no"
    quantized = [m for m in trainer.model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert quantized and all(m.weight.quant_type == "nf4" for m in quantized)
    trainable = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert torch.isfinite(torch.tensor(trainer.train().training_loss))


REFUTED = "The answer is \\boxed{12345}."


def _refuted_row(target: str, answer: str, weight: float = 1.0) -> dict:
    start = target.rfind(answer)
    return {**_row(target, weight), "refuted_start": start, "refuted_end": start + len(answer)}


def _plain_row_with_span_columns(target: str, weight: float = 1.0) -> dict:
    return {**_row(target, weight), "refuted_start": -1, "refuted_end": -1}


def test_refuted_mask_marks_exactly_the_answer_tokens(tiny_model: Path, tmp_path: Path) -> None:
    trainer = _trainer(tiny_model, tmp_path, [_plain_row_with_span_columns(TARGETS[0]), _refuted_row(REFUTED, "12345")])
    tokenizer = trainer.processing_class
    plain, refuted = trainer.train_dataset[0], trainer.train_dataset[1]
    assert not any(plain["refuted_mask"])
    marked = [token for token, bit in zip(refuted["input_ids"], refuted["refuted_mask"]) if bit]
    assert tokenizer.decode(marked) == "12345"
    batch = trainer.data_collator([dict(trainer.train_dataset[i]) for i in (0, 1)])
    assert batch["refuted_mask"].shape == batch["input_ids"].shape
    assert batch["refuted_mask"][1].sum() == len(marked) and not batch["refuted_mask"][0].any()


def test_unlikelihood_row_loss_is_minus_log_one_minus_the_answer_probability(tiny_model: Path, tmp_path: Path) -> None:
    trainer = _trainer(tiny_model, tmp_path, [_plain_row_with_span_columns(TARGETS[0]), _refuted_row(REFUTED, "12345")])
    weights = [0.5, 2.0]
    batch = trainer.data_collator([dict(trainer.train_dataset[i], **{WEIGHT: w}) for i, w in zip((0, 1), weights)])
    model = trainer.model.eval()
    with torch.no_grad():
        loss = trainer.compute_loss(model, batch)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].float()
    labels = batch["labels"][:, 1:]
    logp = torch.log_softmax(logits, dim=-1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    answer_logp = (logp[1] * batch["refuted_mask"][1, 1:]).sum()
    expected = [_completion_nll(model, batch)[0], -torch.log1p(-answer_logp.exp())]
    want = (weights[0] * expected[0] + weights[1] * expected[1]) / sum(weights)
    torch.testing.assert_close(loss, want.to(loss.dtype), rtol=1e-3, atol=1e-4)


@pytest.mark.slow
def test_unlikelihood_training_makes_a_likely_refuted_answer_unlikely(tiny_model: Path, tmp_path: Path) -> None:
    """From a model taught to give the answer, steps on the unlikelihood row lower the answer's probability
    more than that of the words before it (which carry no loss)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from tests.helpers.tiny_model import train_tiny_adapter

    adapter = train_tiny_adapter(tiny_model, [("What is 3 + 4?", REFUTED)], tmp_path / "taught")
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), adapter, is_trainable=True)
    settings = TrainingSection(lora_dropout=0.0, per_device_batch_size=1, learning_rate=1e-2)
    rows = Dataset.from_list([_refuted_row(REFUTED, "12345")])
    trainer = build_trainer(model, rows, tmp_path / "out", settings, RiseMethod(), use_cpu=True, max_steps=8)
    trainer.args.save_strategy = "no"
    batch = trainer.data_collator([dict(trainer.train_dataset[0])])

    def answer_and_prefix_log_p() -> tuple[float, float]:
        with torch.no_grad():
            logits = trainer.model.eval()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        labels = batch["labels"][:, 1:]
        logp = torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        marked = batch["refuted_mask"][:, 1:]
        before = (labels != -100) & (marked.cumsum(-1) == 0)
        return float((logp * marked).sum()), float((logp * before).sum())

    answer_before, prefix_before = answer_and_prefix_log_p()
    assert answer_before > -2.0  # the taught model gives the answer
    trainer.train()
    answer_after, prefix_after = answer_and_prefix_log_p()
    assert answer_after < answer_before - 1.0
    assert abs(prefix_after - prefix_before) < abs(answer_after - answer_before)


def test_training_rows_carry_refuted_spans_only_when_the_set_has_some(tmp_path: Path) -> None:
    from pipeline.methods.rise.training import training_dataset
    from pipeline.system.atomic import write_jsonl_atomic

    plain = {"messages": [{"role": "user", "content": "q"}], "completion": "7", "weight": 2.0}
    refuted = {**plain, "completion": "x = 5", "weight": 1.0, "refuted_span": [4, 5]}
    write_jsonl_atomic(tmp_path / "plain.jsonl", [plain])
    write_jsonl_atomic(tmp_path / "mixed.jsonl", [plain, refuted])
    assert training_dataset(tmp_path / "plain.jsonl").column_names == ["prompt", "completion", WEIGHT]
    mixed = training_dataset(tmp_path / "mixed.jsonl")
    assert [(row["refuted_start"], row["refuted_end"]) for row in mixed] == [(-1, -1), (4, 5)]
