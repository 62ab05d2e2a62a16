"""What every generation backend takes and returns.

The rollout engine talks to a :class:`GenerationBackend`; the vLLM service
client and the transformers ``generate`` fallback both implement it, so the
same rollout code runs on either.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

Message = dict[str, str]


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.7
    top_p: float = 1.0
    max_tokens: int = 256
    stop: tuple[str, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class Completion:
    """One generated answer. The token ids are those the server used (empty when a backend does
    not report them); GRPO trains on exactly these tokens."""

    text: str
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    prompt_token_ids: tuple[int, ...] = ()
    token_ids: tuple[int, ...] = ()


class GenerationError(RuntimeError):
    """A request that failed for good (after retries); the sample is recorded as failed."""


class GenerationBackend(Protocol):
    async def chat(
        self,
        messages: list[Message],
        n: int,
        params: SamplingParams,
        seed: int | None = None,
        adapter: str | None = None,
    ) -> list[Completion]:
        """``n`` completions of one conversation; ``adapter`` names a loaded LoRA adapter (None: base)."""
        ...

    async def load_adapter(self, name: str, path: str) -> None: ...

    async def aclose(self) -> None: ...
