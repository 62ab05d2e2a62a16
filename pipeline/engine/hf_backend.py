"""The transformers ``generate`` backend: the fallback where vLLM cannot run.

It implements the same :class:`~pipeline.engine.generation.GenerationBackend`
interface as the vLLM client. Concurrent ``chat`` calls are queued and served
in left-padded batches by one worker thread, so the rollout engine drives it
exactly like a server. Sampling seeds are per batch, not per request: results
are reproducible for a fixed batch composition only.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from pipeline.engine.adapters import check_adapter_dir
from pipeline.engine.generation import Completion, Message, SamplingParams
from pipeline.engine.precision import resolve_dtype

_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


@dataclass
class _Request:
    messages: list[Message]
    n: int
    params: SamplingParams
    seed: int | None
    adapter: str | None
    future: asyncio.Future


class HFBackend:
    def __init__(self, model_path: str, dtype: str = "auto", batch_size: int = 16, device: str | None = None) -> None:
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.batch_size = batch_size
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = (
            AutoModelForCausalLM.from_pretrained(
                model_path, dtype=_DTYPES[resolve_dtype(dtype, on_cpu=self.device == "cpu")]
            )
            .to(self.device)  # type: ignore[arg-type]  # transformers' decorated ``to`` hides its signature
            .eval()
        )
        self._adapters: set[str] = set()
        self._queue: asyncio.Queue[_Request] | None = None
        self._worker: asyncio.Task | None = None
        self._lock = threading.Lock()  # generate and adapter loading never overlap

    async def chat(
        self,
        messages: list[Message],
        n: int,
        params: SamplingParams,
        seed: int | None = None,
        adapter: str | None = None,
    ) -> list[Completion]:
        if adapter is not None and adapter not in self._adapters:
            raise ValueError(f"adapter {adapter!r} is not loaded; loaded: {sorted(self._adapters)}")
        if self._queue is None:
            self._queue = asyncio.Queue()
            self._worker = asyncio.create_task(self._serve())
        future = asyncio.get_running_loop().create_future()
        await self._queue.put(_Request(messages, n, params, seed, adapter, future))
        return await future

    async def _serve(self) -> None:
        assert self._queue is not None
        while True:
            batch = [await self._queue.get()]
            rows = batch[0].n
            while not self._queue.empty() and rows < self.batch_size:
                head = self._queue.get_nowait()
                batch.append(head)
                rows += head.n
            # Requests that cannot share a generate call (other params or adapter) go in their own.
            groups: dict[tuple, list[_Request]] = {}
            for request in batch:
                groups.setdefault((request.params, request.adapter), []).append(request)
            for group in groups.values():
                try:
                    results = await asyncio.to_thread(self._generate, group)
                except Exception as exc:  # a failed batch fails its requests, not the worker
                    for request in group:
                        request.future.set_exception(exc)
                    continue
                for request, completions in zip(group, results):
                    request.future.set_result(completions)

    def _generate(self, group: list[_Request]) -> list[list[Completion]]:
        params, adapter = group[0].params, group[0].adapter
        prompts = [
            self.tokenizer.apply_chat_template(r.messages, tokenize=False, add_generation_prompt=True)
            for r in group
            for _ in range(r.n)
        ]
        inputs = self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
        sample = params.temperature > 0
        with self._lock, torch.inference_mode():
            if group[0].seed is not None:
                torch.manual_seed(group[0].seed)
            self._select_adapter(adapter)
            output = self.model.generate(
                **inputs,
                max_new_tokens=params.max_tokens,
                do_sample=sample,
                temperature=params.temperature if sample else None,
                top_p=params.top_p if sample else None,
                top_k=None,
                pad_token_id=self.tokenizer.pad_token_id,
                stop_strings=list(params.stop) or None,
                tokenizer=self.tokenizer if params.stop else None,
            )
        new_tokens = output[:, inputs["input_ids"].shape[1] :]
        prompts_ids = [ids[mask.bool()] for ids, mask in zip(inputs["input_ids"], inputs["attention_mask"])]
        rows = [self._completion(prompt, row) for prompt, row in zip(prompts_ids, new_tokens)]
        results, start = [], 0
        for request in group:
            results.append(rows[start : start + request.n])
            start += request.n
        return results

    def _completion(self, prompt: torch.Tensor, tokens: torch.Tensor) -> Completion:
        """One row of a batch, with its unpadded prompt ids and sampled ids (EOS included, as vLLM
        reports them), so GRPO can train on exactly the tokens generated here."""
        ids = tokens.tolist()
        eos = self.tokenizer.eos_token_id
        finished = eos in ids
        if finished:
            ids = ids[: ids.index(eos)]
        ids = [t for t in ids if t != self.tokenizer.pad_token_id]
        sampled = ids + [eos] if finished else ids
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        assert isinstance(text, str), "one sequence of ids decodes to one string"
        return Completion(
            text=text,
            finish_reason="stop" if finished else "length",
            prompt_tokens=len(prompt),
            completion_tokens=len(sampled),
            prompt_token_ids=tuple(prompt.tolist()),
            token_ids=tuple(sampled),
        )

    def _select_adapter(self, adapter: str | None) -> None:
        if not self._adapters:
            return
        if adapter is None:
            self.model.disable_adapter_layers()
        else:
            self.model.enable_adapter_layers()
            self.model.set_adapter(adapter)

    async def load_adapter(self, name: str, path: str) -> None:
        check_adapter_dir(path)
        await asyncio.to_thread(self._load_adapter, name, str(Path(path)))

    def _load_adapter(self, name: str, path: str) -> None:
        from peft import PeftModel

        with self._lock:
            if name in self._adapters:
                return
            if not self._adapters:
                self.model = PeftModel.from_pretrained(self.model, path, adapter_name=name).eval()
            else:
                self.model.load_adapter(path, adapter_name=name)
            self._adapters.add(name)

    async def unload_adapter(self, name: str) -> None:
        """Drop a loaded adapter (ExIt replaces its synced adapter every ``sync_every`` steps)."""
        await asyncio.to_thread(self._unload_adapter, name)

    def _unload_adapter(self, name: str) -> None:
        with self._lock:
            if name not in self._adapters:
                return
            self._adapters.discard(name)
            if self._adapters:
                self.model.delete_adapter(name)
            else:  # the last one: back to the bare base model
                self.model = self.model.unload()

    async def aclose(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
            self._worker = None
            self._queue = None
