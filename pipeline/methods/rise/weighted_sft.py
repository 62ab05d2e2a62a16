"""Reward-weighted SFT: TRL's SFTTrainer with one float weight per example.

RISE trains with reward-weighted regression: each kept turn is an example
whose target (the turn's best action) is weighted by ``exp(reward / tau)``.
The rows are TRL prompt-completion conversations (``prompt``: the history
before the target turn, ``completion``: one assistant message) plus a float
``weight`` column; only the completion tokens carry loss.

The loss of a batch is

    sum_i w_i * L_i / sum_i w_i,

where ``L_i`` is the mean token NLL over example ``i``'s completion tokens.
Per-example means (rather than TRL's per-token mean) make the weight the
whole say of an example, so a long target does not outweigh a short one of
higher reward, as in RWR. Dividing by the weight sum keeps the loss on the
scale of plain SFT whatever tau is, so the learning rate needs no retuning;
a batch whose weights are all zero has loss exactly 0 (no NaN) and no
gradient. ``training.loss_normalization: mean`` divides by the number of
examples instead, as RISE's reference code does (its loss is the plain mean
of ``w_i L_i``): the loss then grows with the weights' scale.

Gradient accumulation: the sum runs over the whole accumulation window,
not over each micro-batch. :meth:`WeightedSFTTrainer.get_batch_samples`
(which ``Trainer`` calls once per optimizer step with that step's micro-
batches) records the window's total weight (or example count); each
micro-batch's loss is its ``sum w_i L_i`` over that total, and the trainer tells ``Trainer`` not to
divide again by the accumulation steps. Summed gradients therefore equal
those of one big batch, exactly, whatever the micro-batch sizes. Under
several processes the total is gathered across ranks and the loss scaled
by the process count, since DDP (like FSDP and DeepSpeed) averages
gradients: N processes take the step one process takes on all their
examples.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import torch
from accelerate.utils import broadcast_object_list
from datasets import Dataset
from peft import LoraConfig, PeftModel
from transformers import PreTrainedModel, Trainer
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from trl import SFTConfig, SFTTrainer

from pipeline.system.atomic import publish_dir
from pipeline.config.settings import TrainingSection

WEIGHT = "weight"
_CHECKPOINT = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")


class WeightCollator:
    """Adds the examples' weights to the batch of the wrapped collator.

    A wrapper (not a subclass) so that SFTTrainer still builds its own
    collator, with the pad token it resolves from the tokenizer.
    """

    def __init__(self, inner: Callable[[list[dict[str, Any]]], dict[str, Any]]) -> None:
        self.inner = inner

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.inner(examples)
        batch[WEIGHT] = torch.tensor([float(example[WEIGHT]) for example in examples], dtype=torch.float32)
        return batch


def _check_supported(args: SFTConfig, dataset: Dataset) -> None:
    """Reject settings under which one loss row is not one example, or TRL computes another loss."""
    if args.packing or args.padding_free:
        raise ValueError("weighted SFT needs one example per row: packing and padding_free are not supported")
    if args.completion_only_loss is False:
        raise ValueError("weighted SFT trains on the completion only: completion_only_loss must not be False")
    if args.label_smoothing_factor or args.loss_type != "nll":
        raise ValueError("weighted SFT computes a weighted NLL: label smoothing and other loss types are not supported")
    if WEIGHT not in dataset.column_names:
        raise ValueError(f"the dataset has no {WEIGHT!r} column")
    weights = torch.tensor(dataset[WEIGHT], dtype=torch.float64)
    if not (torch.isfinite(weights).all() and (weights >= 0).all()):
        raise ValueError("weights must be finite and non-negative")


def _safe_divide(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """``numerator / denominator``, and 0 where both are 0 (an all-zero-weight batch)."""
    return numerator / denominator.clamp(min=torch.finfo(denominator.dtype).tiny)


class WeightedSFTTrainer(SFTTrainer):
    """SFTTrainer whose loss is the weighted mean of per-example completion NLLs (see module doc).

    ``normalization``: ``weights`` divides ``sum w_i L_i`` by ``sum w_i``,
    ``mean`` by the number of examples.
    """

    def __init__(
        self,
        model: str | PreTrainedModel,
        args: SFTConfig,
        train_dataset: Dataset,
        normalization: Literal["weights", "mean"] = "weights",
        **kwargs: Any,
    ) -> None:
        _check_supported(args, train_dataset)
        super().__init__(model=model, args=args, train_dataset=train_dataset, **kwargs)
        self.normalization = normalization
        self.data_collator = WeightCollator(self.data_collator)
        # Each micro-batch loss is already divided by the whole window's weight.
        self.loss_is_scaled_for_ga = True
        self._window_weight: torch.Tensor | None = None

    def _set_signature_columns_if_needed(self) -> None:
        """Keep ``weight`` when ``remove_unused_columns`` prunes the tokenized dataset."""
        super()._set_signature_columns_if_needed()
        if WEIGHT not in self._signature_columns:
            self._signature_columns.append(WEIGHT)

    def get_batch_samples(
        self, epoch_iterator: Iterator, num_batches: int, device: torch.device
    ) -> tuple[list, torch.Tensor | int | None]:
        """Record the total weight (or example count) of one optimizer step's micro-batches (all ranks): the loss denominator."""
        batches, num_items_in_batch = super().get_batch_samples(epoch_iterator, num_batches, device)
        total = sum((self._denominator(batch[WEIGHT]) for batch in batches), torch.zeros(())).to(device)
        if self.args.world_size > 1:
            total = self.accelerator.gather(total).sum()
        self._window_weight = total
        return batches, num_items_in_batch

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        """TRL's compute_loss, for its metrics and fused LM head, with the loss replaced by the weighted one.

        TRL's plain NLL path calls the model exactly once with
        ``fused_lm_head=True``; the first output captured here is that call's
        per-token log-probabilities, which the weighted loss reuses, so no
        extra forward pass runs and TRL's metric code is not copied.
        """
        inputs = dict(inputs)
        weights = inputs.pop(WEIGHT)
        captured = []

        def forward(**kwargs: Any) -> Any:
            outputs = model(**kwargs)
            captured.append(outputs)
            return outputs

        result = super().compute_loss(forward, inputs, return_outputs, num_items_in_batch)
        loss = self._weighted_loss(captured[0], weights)
        return (loss, result[1]) if return_outputs else loss

    def _weighted_loss(self, outputs: Any, weights: torch.Tensor) -> torch.Tensor:
        """``sum w_i L_i`` over this batch's weight sum, or in the training loop over the window's (module doc)."""
        token_counts = outputs.label_mask.sum(dim=-1).clamp(min=1)
        per_example = -outputs.log_probs.float().sum(dim=-1) / token_counts
        weighted_sum = (weights.to(per_example) * per_example).sum()
        if self.model.training and self._window_weight is not None:
            scale = self.accelerator.num_processes
            return _safe_divide(weighted_sum * scale, self._window_weight.to(weighted_sum))
        return _safe_divide(weighted_sum, self._denominator(weights.to(per_example)))

    def _denominator(self, weights: torch.Tensor) -> torch.Tensor:
        """What ``sum w_i L_i`` is divided by: the weights' sum, or the number of examples."""
        return weights.sum() if self.normalization == "weights" else torch.tensor(float(weights.numel()))


def model_load_kwargs(settings: TrainingSection, bf16: bool) -> dict[str, Any]:
    """``from_pretrained`` arguments of the model to train.

    The dtype is the training precision, so that no mixed precision is
    needed. QLoRA loads the frozen base weights in 4-bit NF4 (bitsandbytes)
    and computes in that precision; only the LoRA weights train.
    """
    dtype = torch.bfloat16 if bf16 else torch.float32
    if settings.finetune != "qlora":
        return {"dtype": dtype}
    from transformers import BitsAndBytesConfig

    quantization = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype, bnb_4bit_use_double_quant=True
    )
    return {"dtype": dtype, "quantization_config": quantization}


def trainer_arguments(
    output_dir: str | Path,
    settings: TrainingSection,
    *,
    bf16: bool,
    fp16: bool,
    seed: int,
    use_cpu: bool,
    report_to: list[str] | None = None,
) -> dict[str, Any]:
    """The ``training`` section as the Trainer arguments every trainer here shares (SFT and GRPO).

    Every setting is explicit because TRL's configs default differently from
    Trainer (gradient checkpointing and bf16 on). ``bf16`` also picks the
    dtype the model is loaded in (float32 otherwise), so bf16 autocast is
    never asked of float32 weights or vice versa; ``fp16`` autocasts float32
    weights, with loss scaling. ``report_to`` (``run.report_to``) names the
    trackers whose integration callbacks the trainer builds; none by default.
    """
    return dict(
        output_dir=str(output_dir),
        learning_rate=settings.learning_rate,
        per_device_train_batch_size=settings.per_device_batch_size,
        gradient_accumulation_steps=settings.gradient_accumulation_steps,
        warmup_steps=settings.warmup_ratio,  # a float in [0, 1) is a ratio of the total steps
        lr_scheduler_type=settings.lr_scheduler,
        gradient_checkpointing=settings.gradient_checkpointing,
        save_strategy="steps",
        save_steps=settings.save_steps,
        save_total_limit=settings.save_total_limit,
        bf16=bf16,
        fp16=fp16,
        use_cpu=use_cpu,
        seed=seed,
        report_to=list(report_to or []),
        model_init_kwargs=model_load_kwargs(settings, bf16),
    )


def sft_config(
    output_dir: str | Path,
    settings: TrainingSection,
    *,
    bf16: bool = False,
    fp16: bool = False,
    seed: int = 0,
    max_steps: int = -1,
    use_cpu: bool = False,
    report_to: list[str] | None = None,
) -> SFTConfig:
    """TRL's SFT arguments from the run config's ``training`` section (see :func:`trainer_arguments`)."""
    return SFTConfig(
        **trainer_arguments(output_dir, settings, bf16=bf16, fp16=fp16, seed=seed, use_cpu=use_cpu,
                            report_to=report_to),
        num_train_epochs=settings.epochs,
        max_steps=max_steps,
        max_length=settings.max_seq_length,
        logging_steps=max(1, settings.save_steps // 5),
        # Counted per batch from the attention mask: gives the train_tokens_per_second metric.
        include_num_input_tokens_seen="non_padding",
    )


def lora_config(settings: TrainingSection) -> LoraConfig | None:
    """The LoRA adapter to train (also on QLoRA's 4-bit base), or None for full fine-tuning."""
    if settings.finetune == "full":
        return None
    return LoraConfig(
        r=settings.lora_r,
        lora_alpha=settings.lora_alpha,
        lora_dropout=settings.lora_dropout,
        target_modules=settings.target_modules,
        task_type="CAUSAL_LM",
    )


def build_trainer(
    model: str | Path | PreTrainedModel | PeftModel,
    dataset: Dataset,
    output_dir: str | Path,
    settings: TrainingSection,
    **config_options: Any,
) -> WeightedSFTTrainer:
    """A WeightedSFTTrainer configured from the ``training`` section; ``config_options`` go to :func:`sft_config`.

    ``model`` is a checkpoint to load (a new LoRA adapter is added unless
    ``finetune`` is ``full``) or a loaded model; a loaded ``PeftModel``
    trains the adapter it holds (continuing an earlier iteration's), so no
    new one is added. Checkpoints go to ``output_dir`` every ``save_steps``;
    see :func:`train`.
    """
    args = sft_config(output_dir, settings, **config_options)
    if isinstance(model, PreTrainedModel | PeftModel):
        args.model_init_kwargs = None  # only used to load a checkpoint
    else:
        model = str(model)
    peft_config = None if isinstance(model, PeftModel) else lora_config(settings)
    return WeightedSFTTrainer(
        model=model, args=args, train_dataset=dataset, normalization=settings.loss_normalization, peft_config=peft_config
    )


def last_checkpoint(output_dir: str | Path) -> str | None:
    """The newest completely written checkpoint in ``output_dir``, or None.

    Trainer writes a checkpoint in place and its ``trainer_state.json``
    last, so one cut short by a kill lacks that file (or holds a torn one)
    and must not be resumed from.
    """
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return None
    steps = {int(m.group(1)): path for path in output_dir.iterdir() if (m := _CHECKPOINT.match(path.name))}
    for step in sorted(steps, reverse=True):
        if _is_complete(steps[step]):
            return str(steps[step])
    return None


def checkpoint_step(checkpoint: str | Path | None) -> int:
    """The step a checkpoint directory holds (0 for None: training starts at the beginning)."""
    return int(_CHECKPOINT.match(Path(checkpoint).name).group(1)) if checkpoint else 0


def _is_complete(checkpoint: Path) -> bool:
    try:
        json.loads((checkpoint / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return False
    return True


def train(trainer: Trainer, final_dir: str | Path, *, resume: bool = True) -> Path:
    """Train, continuing from the newest checkpoint in the output dir when ``resume``; save the model or adapter.

    Resuming restores optimizer, scheduler, RNG and data order, so an
    interrupted training stage ends with the same weights as a whole one.
    The final directory appears complete or not at all (:func:`save_final`).
    """
    checkpoint = agreed_checkpoint(trainer) if resume else None
    trainer.train(resume_from_checkpoint=checkpoint)
    return save_final(trainer, Path(final_dir))


def agreed_checkpoint(trainer: Trainer) -> str | None:
    """The newest complete checkpoint as the main process sees it, sent to every process.

    All processes must resume from the same step, or their collectives no
    longer match; a process on another machine could see the shared
    directory a moment out of date, so it does not look for itself.
    """
    found = [last_checkpoint(trainer.args.output_dir) if trainer.accelerator.is_main_process else None]
    if trainer.accelerator.num_processes > 1:
        broadcast_object_list(found)
    return found[0]


def save_final(trainer: Trainer, final_dir: Path) -> Path:
    """Save the model or adapter to a scratch directory beside ``final_dir``, then rename it into place.

    Every process takes part in saving (sharded weights are gathered
    collectively); only the main one writes files and renames.
    """
    partial = final_dir.with_name(f".{final_dir.name}.partial")
    accelerator = trainer.accelerator
    if accelerator.is_main_process:
        shutil.rmtree(partial, ignore_errors=True)  # left by an attempt killed while saving
    accelerator.wait_for_everyone()
    trainer.save_model(str(partial))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        publish_dir(partial, final_dir)
    return final_dir
