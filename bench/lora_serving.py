"""Serving a trained iteration on vLLM: the LoRA adapter on the base model versus the merged checkpoint.

Every iteration after the first is served as a PEFT LoRA adapter (vLLM's
runtime LoRA) unless ``rollout.serve_merged`` is set, in which case the
train stage also writes the adapter merged into the base weights and the
server starts on that checkpoint. This measures both on the same requests:
SmolLM2-135M-Instruct, a random (non-zero) LoRA of rank 16 on all linear
layers, the same prompts and seeds, one server at a time (2 CPU cores), and
prints generated tokens per second and the ratio merged / adapter. Server
start-up is timed separately and excluded.

    .venv/bin/python bench/lora_serving.py [--requests 128] [--max-tokens 64]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from pipeline.config.settings import parse_config
from pipeline.engine.adapters import merge_adapter
from pipeline.engine.model_store import resolve_model
from pipeline.engine.service_client import Endpoint, ServiceClient
from pipeline.engine.vllm_server import VLLMServer
from pipeline.rollouts.service import sampling_params
from pipeline.rollouts.trajectory import request_seed
from pipeline.tasks import Task, load_tasks

ADAPTER = "bench-lora"


def random_adapter(model_path: str, out: Path) -> Path:
    """A rank-16 all-linear LoRA with random A and B, so that it really changes outputs."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    config = LoraConfig(
        r=16, lora_alpha=32, target_modules="all-linear", init_lora_weights=False, task_type="CAUSAL_LM"
    )
    peft_model = get_peft_model(model, config)
    for name, param in peft_model.named_parameters():
        if "lora_B" in name:
            param.data.mul_(1e-3)  # small: a trained adapter's size, not noise that wrecks the model
    peft_model.save_pretrained(out)
    return out


async def generate(url: str, tasks: list[Task], config, adapter: str | None) -> int:
    """All requests at once through the project's client; returns generated tokens."""
    client = ServiceClient([Endpoint(url)], base_model="base", max_concurrency=len(tasks))
    params = sampling_params(config.rollout.sampling)
    try:
        if adapter is not None:
            await client.load_adapter(ADAPTER, adapter)
        results = await asyncio.gather(
            *(
                client.chat(
                    [{"role": "user", "content": t.prompt}],
                    1,
                    params,
                    seed=request_seed(0, t.task_id, 0, 1),
                    adapter=ADAPTER if adapter else None,
                )
                for t in tasks
            )
        )
    finally:
        await client.aclose()
    return sum(c.completion_tokens for completions in results for c in completions)


def serve_and_time(model_path: str, config, tasks: list[Task], log: Path, adapter: str | None) -> tuple[float, float]:
    """(start-up seconds, generated tokens per second) of one server."""
    server = VLLMServer(model_path, config.model, config.rollout.server, log, served_name="base")
    started = time.perf_counter()
    with server:
        startup = time.perf_counter() - started
        asyncio.run(generate(server.url, tasks[:8], config, adapter))  # warm-up (and adapter load)
        begin = time.perf_counter()
        tokens = asyncio.run(generate(server.url, tasks, config, adapter))
        return startup, tokens / (time.perf_counter() - begin)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=128)
    parser.add_argument("--max-tokens", type=int, default=64)
    args = parser.parse_args()
    config = parse_config(
        {
            "model": {"max_model_len": 1024},
            "rollout": {
                "sampling": {"temperature": 0.8, "max_tokens": args.max_tokens},
                "server": {"max_num_seqs": args.requests, "cpu_kvcache_space_gib": 2},
            },
            "tasks": {
                "train": {"source": "arithmetic", "options": {"n_train": args.requests, "n_eval": 16}},
                "eval": {"source": "arithmetic", "options": {"n_train": args.requests, "n_eval": 16}},
            },
        }
    )
    tasks = load_tasks(config.tasks.train, "train")
    base = resolve_model(config.model.name_or_path)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        adapter = random_adapter(base, work / "adapter")
        merged = merge_adapter(base, adapter, work / "merged")
        up_a, adapter_tps = serve_and_time(base, config, tasks, work / "adapter.log", str(adapter))
        up_m, merged_tps = serve_and_time(str(merged), config, tasks, work / "merged.log", None)
    print(f"requests {len(tasks)}, max_tokens {args.max_tokens}")
    print(f"adapter (runtime LoRA): {adapter_tps:8.1f} tok/s   server start {up_a:5.1f} s")
    print(f"merged checkpoint:      {merged_tps:8.1f} tok/s   server start {up_m:5.1f} s")
    print(f"ratio merged / adapter: {merged_tps / adapter_tps:.2f}")


if __name__ == "__main__":
    main()
