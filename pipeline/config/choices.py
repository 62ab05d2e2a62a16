"""The allowed values of the config's keys that the code branches on, one enum each.

The config declares its fields with these enums, and the code that reads
them compares against their members, so a value is spelled once. Each is a
``StrEnum`` whose value is the YAML spelling: configs, ``config.yaml`` and
the records keep the strings they always held.
"""

from __future__ import annotations

from enum import StrEnum


class Choice(StrEnum):
    """An enum of a config key's values; its ``repr`` is the YAML spelling, so that pydantic's error for a value
    outside a subset (``Literal[FeedbackMode.BINARY, ...]``) lists the values as a config writes them."""

    def __repr__(self) -> str:
        return repr(self.value)


class FeedbackMode(Choice):
    """The user message after an answer (RISE's ``method.feedback``, ``evaluation.feedback``)."""

    BINARY = "binary"
    GRADER = "grader"
    NONE = "none"
    IMPROVE = "improve"


class Finetune(Choice):
    """What training changes (``training.finetune``): a LoRA adapter, one on a 4-bit base, or every weight."""

    LORA = "lora"
    QLORA = "qlora"
    FULL = "full"


class Backend(Choice):
    """What generates rollouts (``rollout.backend``): vLLM servers, or transformers' ``generate``."""

    VLLM = "vllm"
    HF = "hf"


class TrackerName(Choice):
    """An experiment tracker the run logs into (``run.report_to``)."""

    TENSORBOARD = "tensorboard"
    WANDB = "wandb"
