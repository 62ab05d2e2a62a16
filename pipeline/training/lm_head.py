"""The LM head where TRL has no Triton kernel: score only the labelled positions, in one projection.

TRL's trainers ask the model for per-token log-probabilities with
``model(..., labels=labels, fused_lm_head=True)``
(:func:`trl.trainer.utils.add_fused_lm_head`). On CUDA a Triton kernel scores
the labelled positions only. Elsewhere TRL scores *every* position, prompt
and padding included, in tiles of 4,096 tokens x 32,768 vocabulary entries
folded in torch ops, each op a fresh 512 MB float32 temporary. On a CPU
that is a large share of a training step, gigabytes of transient memory per
step and hundreds of millions of page faults (``bench/train.py`` measures
it). A completion-only loss needs the labelled positions alone: a few hundred
per batch, whose logits fit in one plain ``lm_head`` projection and one
log-softmax that autograd differentiates.

:func:`add_compact_lm_head` wraps the forward TRL patched: calls with
``fused_lm_head=True`` take the compact path and return TRL's own
:class:`~trl.trainer.utils.FusedCausalLMOutput`, so TRL's losses and metrics
read it unchanged; every other call goes to TRL's forward.
"""

from __future__ import annotations

import functools
import types
from typing import Any

import torch
from peft import PeftModel
from transformers import PreTrainedModel, Trainer
from trl.trainer.utils import FusedCausalLMOutput

IGNORE_INDEX = -100
# Per-token outputs the compact path computes; a trainer that asks for others keeps TRL's path.
COMPACT_OUTPUTS = frozenset({"log_probs", "entropy", "is_top1"})
# Config keys that change the logits beyond the projection (scaling, soft-capping): those models keep TRL's path.
_LOGIT_TRANSFORMS = (
    "final_logit_softcapping",
    "logit_scale",
    "output_multiplier",
    "lm_head_multiplier",
    "logits_scaling",
)


def compact_head_applies(model: PreTrainedModel, outputs: tuple[str, ...]) -> bool:
    """True when the compact path computes exactly what TRL's fused head would for ``model`` and ``outputs``."""
    config = model.config.get_text_config()
    plain_logits = all(getattr(config, key, None) is None for key in _LOGIT_TRANSFORMS)
    plain_model = config is model.config and not getattr(config, "output_router_logits", False)
    return plain_logits and plain_model and set(outputs) <= COMPACT_OUTPUTS


def use_compact_lm_head(trainer: Trainer, outputs: tuple[str, ...], temperature: float = 1.0) -> bool:
    """Give ``trainer``'s model the compact LM head when it trains on the CPU and the head applies; True if it did.

    ``outputs`` and ``temperature`` are those the trainer gave TRL's fused head.
    """
    model = trainer.model.get_base_model() if isinstance(trainer.model, PeftModel) else trainer.model
    fp32_head = getattr(trainer.args, "cast_lm_head_to_fp32", False)  # GRPO's: the projection itself in float32
    on_cpu = trainer.args.device.type == "cpu"
    if not isinstance(model, PreTrainedModel) or not on_cpu or fp32_head or not compact_head_applies(model, outputs):
        return False
    add_compact_lm_head(model, temperature, outputs)
    return True


def add_compact_lm_head(
    model: PreTrainedModel, temperature: float = 1.0, outputs: tuple[str, ...] = ("log_probs",)
) -> None:
    """Route ``model``'s ``fused_lm_head=True`` calls through :func:`compact_log_probs`.

    Call it on the model TRL patched (the PEFT wrapper's base model), after the
    trainer is built; ``temperature`` and ``outputs`` are those the trainer gave
    :func:`~trl.trainer.utils.add_fused_lm_head`.
    """
    trl_forward = model.forward

    @functools.wraps(type(model).forward)
    def forward(
        self: PreTrainedModel,
        *args: Any,
        fused_lm_head: bool = False,
        labels: torch.Tensor | None = None,
        shift_labels: torch.Tensor | None = None,
        num_items_in_batch: Any = None,
        **kwargs: Any,
    ) -> Any:
        if not fused_lm_head or shift_labels is not None or labels is None:
            return trl_forward(
                *args,
                fused_lm_head=fused_lm_head,
                labels=labels,
                shift_labels=shift_labels,
                num_items_in_batch=num_items_in_batch,
                **kwargs,
            )
        kwargs["use_cache"] = False
        hidden = self.base_model(*args, **kwargs).last_hidden_state[:, :-1]
        return compact_log_probs(
            hidden, labels[:, 1:], self.get_output_embeddings(), temperature, outputs, num_items_in_batch
        )

    model.forward = types.MethodType(forward, model)


def compact_log_probs(
    hidden: torch.Tensor,
    targets: torch.Tensor,
    lm_head: torch.nn.Module,
    temperature: float = 1.0,
    outputs: tuple[str, ...] = ("log_probs",),
    num_items_in_batch: Any = None,
) -> FusedCausalLMOutput:
    """Per-token log-probabilities of ``targets`` (already shifted) under ``lm_head(hidden) / temperature``.

    Only positions whose target is not ``-100`` are projected; every per-token
    field is zero elsewhere, as in TRL's fused head. The log-softmax runs in
    float32 whatever the autocast dtype, so a bfloat16 forward keeps a float32
    loss. ``entropy`` carries its gradient (GRPO's entropy bonus uses it);
    ``is_top1`` is the target being the first maximum of the logits.
    """
    mask = targets != IGNORE_INDEX
    selected = targets[mask]
    logits = lm_head(hidden[mask]).float() / temperature
    log_softmax = logits.log_softmax(dim=-1)

    def spread(values: torch.Tensor) -> torch.Tensor:
        """Per-label values back in the targets' shape; ``masked_scatter`` keeps the graph even with no label."""
        return values.new_zeros(mask.shape).masked_scatter(mask, values)

    log_probs = spread(log_softmax.gather(-1, selected.unsqueeze(-1)).squeeze(-1))
    entropy = spread(-(log_softmax.exp() * log_softmax).sum(dim=-1)) if "entropy" in outputs else None
    is_top1 = spread(logits.detach().argmax(dim=-1) == selected) if "is_top1" in outputs else None
    denominator = mask.sum().clamp(min=1) if num_items_in_batch is None else num_items_in_batch
    return FusedCausalLMOutput(
        loss=-log_probs.sum() / denominator, log_probs=log_probs, entropy=entropy, is_top1=is_top1, label_mask=mask
    )
