"""Rollout throughput: the project's rollout path against bare vLLM, side by side.

One vLLM server (SmolLM2-135M-Instruct, CPU build) serves both contenders,
alternating rounds so that machine noise hits both alike:

  (a) raw:     every request sent at once to the server's chat endpoint with httpx
  (b) ours:    the rollout engine (TrajectoryRunner + collect): one turn, one
               sample per task, graded in the process pool, written to disk

Same prompts, sampling parameters and per-request seeds. Prints generated
tokens per second for each and the ratio b/a, then the hf backend's figure on
a smaller set. Server start-up is timed separately and excluded.

    .venv/bin/python bench/rollout.py [--requests 256] [--max-tokens 128] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import httpx

from pipeline.system.atomic import read_jsonl
from pipeline.config.settings import parse_config
from pipeline.engine.hf_backend import HFBackend
from pipeline.engine.model_store import resolve_model
from pipeline.rollouts.trajectory import TrajectoryRunner, request_seed
from pipeline.methods.rise.stages import collection_spec
from pipeline.rollouts.service import collect, pooled_grading
from pipeline.engine.service_client import Endpoint, ServiceClient
from pipeline.tasks import Task, load_tasks
from pipeline.engine.vllm_server import VLLMServer
from rewards.pool import GradingPool


def bench_config(requests: int, max_tokens: int) -> dict:
    return {
        "model": {"max_model_len": 1024},
        "rollout": {
            "turns": 1,
            "samples_per_turn": 1,
            "max_concurrency": requests,
            "sampling": {"temperature": 0.8, "max_tokens": max_tokens},
            "server": {"max_num_seqs": requests, "cpu_kvcache_space_gib": 2},
        },
        "tasks": {
            "train": {"source": "arithmetic", "options": {"seed": 0, "n_train": requests, "n_eval": 16}},
            "eval": {"source": "arithmetic", "options": {"seed": 0, "n_train": requests, "n_eval": 16}},
        },
    }


async def raw_round(url: str, tasks: list[Task], max_tokens: int, seed: int) -> int:
    """Bare vLLM: all requests in flight at once; returns generated tokens."""
    limits = httpx.Limits(max_connections=len(tasks) + 8)
    async with httpx.AsyncClient(timeout=600, limits=limits) as http:

        async def one(task: Task) -> int:
            response = await http.post(
                f"{url}/v1/chat/completions",
                json={
                    "model": "base",
                    "messages": [{"role": "user", "content": task.prompt}],
                    "temperature": 0.8,
                    "max_tokens": max_tokens,
                    "seed": request_seed(seed, task.task_id, 0, 1),
                },
            )
            response.raise_for_status()
            return response.json()["usage"]["completion_tokens"]

        return sum(await asyncio.gather(*(one(t) for t in tasks)))


async def ours_round(url: str, tasks: list[Task], spec, pool: GradingPool, out: Path) -> int:
    client = ServiceClient([Endpoint(url)], base_model="base", max_concurrency=len(tasks))
    try:
        runner = TrajectoryRunner(spec, client, pooled_grading(pool, "numeric", {}))
        path = await collect(tasks, runner, out, "ours", show_progress=False)
    finally:
        await client.aclose()
    return generated_tokens(path)


def generated_tokens(rollouts: Path) -> int:
    return sum(turn["completion_tokens"] for record in read_jsonl(rollouts) for turn in record["turns"])


def timed(coro) -> tuple[int, float]:
    start = time.perf_counter()
    tokens = asyncio.run(coro)
    return tokens, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=256)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--hf-requests", type=int, default=32)
    args = parser.parse_args()

    config = parse_config(bench_config(args.requests, args.max_tokens))
    tasks = load_tasks(config.tasks.train, "train")
    spec = collection_spec(config, adapter=None)
    model_path = resolve_model(config.model.name_or_path)
    work = Path(tempfile.mkdtemp(prefix="bench-rollout-"))

    started = time.perf_counter()
    server = VLLMServer(model_path, config.model, config.rollout.server, work / "vllm.log", served_name="base")
    results: dict[str, list[tuple[int, float]]] = {"raw": [], "ours": []}
    with server, GradingPool(2, 10.0) as pool:
        print(f"server healthy after {time.perf_counter() - started:.1f} s (excluded below)")
        asyncio.run(raw_round(server.url, tasks[:16], 16, seed=99))  # warm-up
        for round_index in range(args.rounds):
            results["raw"].append(timed(raw_round(server.url, tasks, args.max_tokens, config.run.seed)))
            out = work / f"ours-{round_index}"
            results["ours"].append(timed(ours_round(server.url, tasks, spec, pool, out)))
            for name in ("raw", "ours"):
                tokens, seconds = results[name][-1]
                print(f"round {round_index + 1} {name:>4}: {tokens} tokens in {seconds:.1f} s = {tokens / seconds:.1f} tok/s")

    rate = {name: sum(t for t, _ in runs) / sum(s for _, s in runs) for name, runs in results.items()}
    print(f"\n{args.requests} requests x {args.max_tokens} max tokens, {args.rounds} alternating rounds")
    print(f"(a) vLLM alone     : {rate['raw']:.1f} generated tok/s")
    print(f"(b) rollout engine : {rate['ours']:.1f} generated tok/s")
    print(f"ratio b/a          : {rate['ours'] / rate['raw']:.3f}")

    hf = HFBackend(model_path, "bfloat16", batch_size=16)
    hf_tasks = tasks[: args.hf_requests]

    async def hf_round() -> int:
        with GradingPool(1, 10.0) as hf_pool:
            runner = TrajectoryRunner(spec, hf, pooled_grading(hf_pool, "numeric", {}))
            path = await collect(hf_tasks, runner, work / "hf", "hf", show_progress=False)
        await hf.aclose()
        return generated_tokens(path)

    tokens, seconds = timed(hf_round())
    print(f"hf backend (batch 16, {len(hf_tasks)} requests): {tokens / seconds:.1f} tok/s")


if __name__ == "__main__":
    main()
