"""The transformers ``generate`` backend on the tiny model: the token ids it reports and adapter swapping.

ExIt's GRPO trains on the exact ids a backend reports, so they must be the
unpadded prompt and the sampled tokens (EOS included, as vLLM reports them),
whatever else shares the padded batch.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from pipeline.engine.generation import Completion, SamplingParams
from pipeline.engine.hf_backend import HFBackend

SHORT = [{"role": "user", "content": "What is 2 + 3?"}]
LONG = [{"role": "user", "content": "A baker sells 12 loaves each morning and 7 each evening. How many in a day?"}]
GREEDY = SamplingParams(temperature=0.0, max_tokens=12)


async def _chats(
    backend: HFBackend, requests: list[tuple[list[dict[str, str]], int, str | None]]
) -> list[list[Completion]]:
    """All requests in flight at once, so the backend batches (and pads) them together."""
    params = SamplingParams(temperature=1.0, max_tokens=12)
    return list(await asyncio.gather(*(backend.chat(m, n, params, seed=0, adapter=a) for m, n, a in requests)))


def test_token_ids_are_the_unpadded_prompt_and_the_sampled_tokens(tiny_model: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    backend = HFBackend(str(tiny_model), "float32", batch_size=8, device="cpu")

    async def scenario() -> list[list[Completion]]:
        try:
            return await _chats(backend, [(SHORT, 3, None), (LONG, 2, None)])
        finally:
            await backend.aclose()

    short, long = asyncio.run(scenario())
    for messages, completions in ((SHORT, short), (LONG, long)):
        expected = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
        for completion in completions:
            assert list(completion.prompt_token_ids) == list(expected["input_ids"])
            assert completion.prompt_tokens == len(completion.prompt_token_ids)
            assert completion.completion_tokens == len(completion.token_ids) > 0
            assert tokenizer.pad_token_id not in completion.token_ids[:-1]
            assert tokenizer.decode(completion.token_ids, skip_special_tokens=True) == completion.text
            finished = completion.token_ids[-1] == tokenizer.eos_token_id
            assert completion.finish_reason == ("stop" if finished else "length")
    # The short prompt was left-padded to the long one's length, yet reports no pad.
    assert len(short[0].prompt_token_ids) < len(long[0].prompt_token_ids)


def test_unloading_adapters_restores_the_remaining_model(tiny_model: Path, tiny_adapter: Path) -> None:
    backend = HFBackend(str(tiny_model), "float32", batch_size=8, device="cpu")

    async def greedy(adapter: str | None) -> str:
        return (await backend.chat(SHORT, 1, GREEDY, seed=0, adapter=adapter))[0].text

    async def scenario() -> dict[str, str]:
        try:
            seen = {"base": await greedy(None)}
            await backend.load_adapter("first", str(tiny_adapter))
            await backend.load_adapter("second", str(tiny_adapter))
            seen["first"] = await greedy("first")
            await backend.unload_adapter("first")
            seen["second after unloading first"] = await greedy("second")
            with pytest.raises(ValueError, match="adapter 'first' is not loaded"):
                await greedy("first")
            await backend.unload_adapter("second")
            seen["base after unloading both"] = await greedy(None)
            return seen
        finally:
            await backend.aclose()

    seen = asyncio.run(scenario())
    assert seen["first"] != seen["base"]  # the adapter really changed the output
    assert seen["second after unloading first"] == seen["first"]
    assert seen["base after unloading both"] == seen["base"]
