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
gradient. ``method.loss_normalization: mean`` divides by the number of
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

Unlikelihood rows (``refuted_start``/``refuted_end`` columns: a character
span of the completion, -1 on ordinary rows) replace ``L_i`` by
``-log(1 - p_i)``, ``p_i`` the probability of the span's tokens together
(sequence-level unlikelihood, Welleck et al., 2019): it vanishes once the
refuted answer is unlikely, so digits it shares with right answers are not
pushed down for ever, and it weighs into the sum like any other row. The
span becomes a token mask once, after TRL tokenizes the dataset.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from peft import PeftModel
from transformers import PreTrainedModel
from trl import SFTConfig, SFTTrainer

from pipeline.config.settings import TrainingSection
from pipeline.methods.rise.choices import LossNormalization
from pipeline.methods.rise.method import RiseMethod
from pipeline.training.lm_head import IGNORE_INDEX, use_compact_lm_head
from pipeline.training.trainer import lora_config, trainer_arguments

WEIGHT = "weight"
REFUTED_SPAN = ("refuted_start", "refuted_end")
REFUTED_MASK = "refuted_mask"
# 1 - p is clamped here so that an answer the model is sure of gives a large but finite loss.
MIN_UNLIKELIHOOD = 1e-4
# The per-token fields SFTTrainer asks its fused LM head for (the loss and its entropy and accuracy metrics).
SFT_OUTPUTS = ("log_probs", "entropy", "is_top1")


class WeightCollator:
    """Adds the examples' weights (and unlikelihood masks, when the rows have them) to the wrapped collator's batch.

    A wrapper (not a subclass) so that SFTTrainer still builds its own
    collator, with the pad token it resolves from the tokenizer.
    """

    def __init__(self, inner: Callable[[list[dict[str, Any]]], dict[str, Any]]) -> None:
        self.inner = inner

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        masks = [example.pop(REFUTED_MASK) for example in examples] if REFUTED_MASK in examples[0] else None
        batch = self.inner(examples)
        batch[WEIGHT] = torch.tensor([float(example[WEIGHT]) for example in examples], dtype=torch.float32)
        if masks is not None:
            padded = torch.zeros(batch["input_ids"].shape, dtype=torch.bool)  # TRL pads on the right
            for row, mask in zip(padded, masks):
                row[: len(mask)] = torch.tensor(mask[: len(row)], dtype=torch.bool)
            batch[REFUTED_MASK] = padded
        return batch


def refuted_token_mask(
    tokenizer: Any, input_ids: list[int], labels: list[int], text: str, span: tuple[int, int]
) -> list[int]:
    """1 on the tokens of ``input_ids`` whose text overlaps ``span`` (character offsets into the completion ``text``).

    The completion's tokens decode to ``text`` followed by what the chat
    template closes a turn with; offsets come from decoding growing
    prefixes, so any tokenizer works. A span that truncation cut off gives
    no token, and the row then carries no loss.
    """
    start = next((i for i, label in enumerate(labels) if label != IGNORE_INDEX), len(input_ids))
    completion = input_ids[start:]
    decoded = tokenizer.decode(completion)
    shift = decoded.find(text) if text else -1
    mask = [0] * len(input_ids)
    if shift < 0:
        return mask
    low, high = span[0] + shift, span[1] + shift
    ends = [len(tokenizer.decode(completion[: k + 1])) for k in range(len(completion))]
    for k, end in enumerate(ends):
        begin = ends[k - 1] if k else 0
        if begin < high and end > low:
            mask[start + k] = 1
    return mask


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


def _with_unlikelihood(per_example: torch.Tensor, log_probs: torch.Tensor, refuted: torch.Tensor) -> torch.Tensor:
    """``per_example`` with the rows that mark refuted tokens replaced by ``-log(1 - p)`` of those tokens.

    ``refuted`` is aligned with ``log_probs`` (the labels' shift applied); a
    row without marked tokens keeps its NLL, so ordinary rows are untouched.
    """
    marked = refuted.to(log_probs.device)
    sequence_log_p = (log_probs * marked).sum(dim=-1)
    unlikelihood = -torch.log1p(-sequence_log_p.exp().clamp(max=1 - MIN_UNLIKELIHOOD))
    return torch.where(marked.any(dim=-1), unlikelihood, per_example)


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
        model: str | PreTrainedModel | PeftModel,
        args: SFTConfig,
        train_dataset: Dataset,
        normalization: LossNormalization = LossNormalization.WEIGHTS,
        **kwargs: Any,
    ) -> None:
        _check_supported(args, train_dataset)
        super().__init__(model=model, args=args, train_dataset=train_dataset, **kwargs)
        self.normalization = normalization
        if REFUTED_SPAN[0] in train_dataset.column_names:
            self.train_dataset = self._with_refuted_masks(self.train_dataset)
        self.data_collator = WeightCollator(self.data_collator)
        # Each micro-batch loss is already divided by the whole window's weight.
        self.loss_is_scaled_for_ga = True  # type: ignore[assignment]  # declared ``bool | None`` by transformers
        self._window_weight: torch.Tensor | None = None
        # On the CPU, the loss's LM head scores the completion tokens alone (pipeline.training.lm_head).
        self.compact_lm_head = use_compact_lm_head(self, SFT_OUTPUTS)

    def _set_signature_columns_if_needed(self) -> None:
        """Keep ``weight`` when ``remove_unused_columns`` prunes the tokenized dataset."""
        super()._set_signature_columns_if_needed()
        columns: list[str] = list(self._signature_columns or [])
        # transformers types the attribute by its initial None; the base method has just set a list.
        self._signature_columns = columns + [c for c in (WEIGHT, REFUTED_MASK) if c not in columns]  # type: ignore[assignment]

    def _with_refuted_masks(self, dataset: Dataset) -> Dataset:
        """The tokenized rows with a ``refuted_mask`` column: the tokens of each unlikelihood row's span."""

        def add_mask(row: dict[str, Any]) -> dict[str, Any]:
            start, end = row[REFUTED_SPAN[0]], row[REFUTED_SPAN[1]]
            if start < 0:
                return {REFUTED_MASK: [0] * len(row["input_ids"])}
            text = row["completion"][0]["content"]
            return {
                REFUTED_MASK: refuted_token_mask(
                    self.processing_class, row["input_ids"], row["labels"], text, (start, end)
                )
            }

        return dataset.map(add_mask, desc="Marking refuted answers")

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
        refuted = inputs.pop(REFUTED_MASK, None)
        captured = []

        def forward(**kwargs: Any) -> Any:
            outputs = model(**kwargs)
            captured.append(outputs)
            return outputs

        result = super().compute_loss(forward, inputs, return_outputs, num_items_in_batch)
        loss = self._weighted_loss(captured[0], weights, refuted)
        return (loss, result[1]) if return_outputs else loss

    def _weighted_loss(self, outputs: Any, weights: torch.Tensor, refuted: torch.Tensor | None) -> torch.Tensor:
        """``sum w_i L_i`` over this batch's weight sum, or in the training loop over the window's (module doc)."""
        token_counts = outputs.label_mask.sum(dim=-1).clamp(min=1)
        per_example = -outputs.log_probs.float().sum(dim=-1) / token_counts
        if refuted is not None:
            per_example = _with_unlikelihood(per_example, outputs.log_probs.float(), refuted[:, 1:])
        weighted_sum = (weights.to(per_example) * per_example).sum()
        if self.model is not None and self.model.training and self._window_weight is not None:
            scale = self.accelerator.num_processes
            return _safe_divide(weighted_sum * scale, self._window_weight.to(weighted_sum))
        return _safe_divide(weighted_sum, self._denominator(weights.to(per_example)))

    def _denominator(self, weights: torch.Tensor) -> torch.Tensor:
        """What ``sum w_i L_i`` is divided by: the weights' sum, or the number of examples."""
        return (
            weights.sum() if self.normalization == LossNormalization.WEIGHTS else torch.tensor(float(weights.numel()))
        )


def sft_config(
    output_dir: str | Path,
    settings: TrainingSection,
    method: RiseMethod,
    *,
    bf16: bool = False,
    fp16: bool = False,
    seed: int = 0,
    max_steps: int = -1,
    use_cpu: bool = False,
    report_to: list[str] | None = None,
) -> SFTConfig:
    """TRL's SFT arguments from the run config's ``training`` section (see :func:`trainer_arguments`) and the
    SFT's own settings in RISE's ``method`` section."""
    return SFTConfig(
        **trainer_arguments(
            output_dir, settings, bf16=bf16, fp16=fp16, seed=seed, use_cpu=use_cpu, report_to=report_to
        ),
        num_train_epochs=method.epochs,
        max_steps=max_steps,
        max_length=method.max_seq_length,
        train_sampling_strategy=method.train_sampling_strategy,
        logging_steps=max(1, settings.save_steps // 5),
        # Counted per batch from the attention mask: gives the train_tokens_per_second metric.
        include_num_input_tokens_seen="non_padding",
    )


def build_trainer(
    model: str | Path | PreTrainedModel | PeftModel,
    dataset: Dataset,
    output_dir: str | Path,
    settings: TrainingSection,
    method: RiseMethod,
    **config_options: Any,
) -> WeightedSFTTrainer:
    """A WeightedSFTTrainer configured from the ``training`` and ``method`` sections; ``config_options`` go to
    :func:`sft_config`.

    ``model`` is a checkpoint to load (a new LoRA adapter is added unless
    ``finetune`` is ``full``) or a loaded model; a loaded ``PeftModel``
    trains the adapter it holds (continuing an earlier iteration's), so no
    new one is added. Checkpoints go to ``output_dir`` every ``save_steps``;
    see :func:`train`.
    """
    args = sft_config(output_dir, settings, method, **config_options)
    if isinstance(model, PreTrainedModel | PeftModel):
        args.model_init_kwargs = None  # only used to load a checkpoint
    else:
        model = str(model)
    peft_config = None if isinstance(model, PeftModel) else lora_config(settings)
    return WeightedSFTTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        normalization=method.loss_normalization,
        peft_config=peft_config,
    )
