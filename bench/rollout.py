"""Rollout throughput: vLLM's default CPU server settings against ours, and our rollout path against bare vLLM.

Three contenders on the same prompts, sampling parameters and per-request seeds:

  (a) vLLM default: a server with vLLM's own CPU settings (one core kept for
               its scheduler: on 2 cores the model runs on one), every request
               sent at once to its chat endpoint with httpx
  (b) raw:     the same bare requests to a server with the pipeline's settings
               (``rollout.server.cpu_reserved_cores: 0``: the model on every core)
  (c) ours:    the rollout engine (TrajectoryRunner + collect) on that server:
               one turn, one sample per task, graded in the process pool, written to disk

Only one server runs at a time (they would share the cores); (b) and (c)
alternate rounds on theirs, so that machine noise hits both alike. Prints
generated tokens per second of each, the ratios b/a (server settings) and
c/b (our overhead), each server's peak resident memory (all its processes),
then the hf backend's figure on a smaller set. Server start-up is timed
separately and excluded. The model runs in ``model.dtype: auto`` (float32 on
a CPU without native bfloat16).

    .venv/bin/python bench/rollout.py [--requests 256] [--max-tokens 128] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from pipeline.config.settings import PipelineConfig, parse_config
from pipeline.engine.hf_backend import HFBackend
from pipeline.engine.model_store import resolve_model
from pipeline.engine.precision import resolve_dtype
from pipeline.engine.service_client import Endpoint, ServiceClient
from pipeline.engine.vllm_server import VLLMServer, is_cpu_build
from pipeline.methods.rise.stages import collection_spec
from pipeline.rollouts.records import read_records
from pipeline.rollouts.service import collect, pooled_grading
from pipeline.rollouts.trajectory import TrajectoryRunner, request_seed
from pipeline.tasks import Task, load_tasks
from rewards.pool import GradingPool


def bench_config(requests: int, max_tokens: int, reserved_cores: int | None = 0) -> dict:
    return {
        "model": {"max_model_len": 1024},
        "method": {"name": "rise", "turns": 1, "samples_per_turn": 1},
        "rollout": {
            "max_concurrency": requests,
            "sampling": {"temperature": 0.8, "max_tokens": max_tokens},
            "server": {"max_num_seqs": requests, "cpu_kvcache_space_gib": 2, "cpu_reserved_cores": reserved_cores},
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
    return sum(turn.completion_tokens for record in read_records(rollouts) for turn in record.turns)


def timed(coro) -> tuple[int, float]:
    start = time.perf_counter()
    tokens = asyncio.run(coro)
    return tokens, time.perf_counter() - start


def peak_rss_gb(server: VLLMServer) -> float:
    """The server's peak resident memory: the sum of VmHWM over the processes of its session (API, engine, worker)."""
    total_kib = 0
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            if os.getsid(int(status.parent.name)) != server.pid:
                continue
            fields = dict(line.split(":", 1) for line in status.read_text().splitlines() if ":" in line)
        except (OSError, ValueError):
            continue
        total_kib += int(fields.get("VmHWM", "0 kB").split()[0])
    return total_kib * 1024 / 1e9


@contextmanager
def serve(config: PipelineConfig, model_path: str, log: Path) -> Iterator[VLLMServer]:
    """A started, warmed-up server with ``config``'s settings; its start-up time is printed, not counted."""
    started = time.perf_counter()
    with VLLMServer(model_path, config.model, config.rollout.server, log, served_name="base") as server:
        print(f"{log.stem}: server healthy after {time.perf_counter() - started:.1f} s (excluded below)", flush=True)
        asyncio.run(raw_round(server.url, load_tasks(config.tasks.train, "train")[:16], 16, seed=99))
        yield server


def report(name: str, runs: list[tuple[int, float]]) -> float:
    for index, (tokens, seconds) in enumerate(runs):
        print(f"round {index + 1} {name:>12}: {tokens} tokens in {seconds:.1f} s = {tokens / seconds:.1f} tok/s")
    return sum(t for t, _ in runs) / sum(s for _, s in runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=256)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--hf-requests", type=int, default=32)
    args = parser.parse_args()

    config = parse_config(bench_config(args.requests, args.max_tokens))
    vllm_default = parse_config(bench_config(args.requests, args.max_tokens, reserved_cores=None))
    tasks = load_tasks(config.tasks.train, "train")
    spec = collection_spec(config, adapter=None)
    model_path = resolve_model(config.model.name_or_path)
    work = Path(tempfile.mkdtemp(prefix="bench-rollout-"))
    results: dict[str, list[tuple[int, float]]] = {"vLLM default": [], "raw": [], "ours": []}
    memory: dict[str, float] = {}

    with serve(vllm_default, model_path, work / "vllm-default.log") as server:
        for _ in range(args.rounds):
            results["vLLM default"].append(timed(raw_round(server.url, tasks, args.max_tokens, config.run.seed)))
        memory["vLLM default"] = peak_rss_gb(server)
    with serve(config, model_path, work / "vllm-ours.log") as server, GradingPool(2, 10.0) as pool:
        for round_index in range(args.rounds):
            results["raw"].append(timed(raw_round(server.url, tasks, args.max_tokens, config.run.seed)))
            out = work / f"ours-{round_index}"
            results["ours"].append(timed(ours_round(server.url, tasks, spec, pool, out)))
        memory["ours"] = peak_rss_gb(server)

    rate = {name: report(name, runs) for name, runs in results.items()}
    print(
        f"\n{args.requests} requests x {args.max_tokens} max tokens, {args.rounds} rounds each, "
        f"dtype {resolve_dtype(config.model.dtype, on_cpu=is_cpu_build())}, {os.cpu_count()} CPUs"
    )
    print(
        f"(a) vLLM default settings, bare : {rate['vLLM default']:7.1f} generated tok/s, "
        f"server peak RSS {memory['vLLM default']:.2f} GB"
    )
    print(
        f"(b) our settings, bare          : {rate['raw']:7.1f} generated tok/s, server peak RSS {memory['ours']:.2f} GB"
    )
    print(f"(c) our settings, rollout engine: {rate['ours']:7.1f} generated tok/s")
    print(f"ratio b/a (server settings)     : {rate['raw'] / rate['vLLM default']:7.3f}")
    print(f"ratio c/b (rollout engine)      : {rate['ours'] / rate['raw']:7.3f}")
    print(f"ratio c/a                       : {rate['ours'] / rate['vLLM default']:7.3f}")

    hf = HFBackend(model_path, config.model.dtype, batch_size=16)
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
