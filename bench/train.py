"""Training throughput on the quickstart's curated data: ours against plain TRL, both against the machine's limit.

Two contenders train SmolLM2-135M-Instruct with the quickstart's ``training``
section (``configs/quickstart.yaml``: LoRA r 16 on all linear layers, its
batches, accumulation and sampler) on the same curated RISE rows (default:
the quickstart's iteration-1 training set, shipped in ``data/bench/``), with
the same TRL arguments (``sft_config``: seed, steps, float32 or ``--bf16``),
so they see the same batches:

  plain:    TRL's own ``SFTTrainer`` (the weight column dropped)
  weighted: our ``WeightedSFTTrainer``, as the train stage builds it

Each runs in a process of its own, so that its peak resident memory is its
own, under the allocator the train stage preloads on a CPU (tcmalloc, where
installed); rounds alternate which goes first. Trainer construction (model load,
tokenization) is excluded from the time. In the same run the parent measures
the machine's matmul limit (a 2048 x 2048 ``torch.mm`` on all threads, float32
and bfloat16) and prints each contender's model FLOP/s as a share of the limit
of the dtype it trained in. Model FLOPs per trained token are 4 x the
parameter count (the forward pass and the activation gradients; LoRA's weight
gradients are negligible), the same yardstick for both, whatever each computes.

    .venv/bin/python bench/train.py [--data PATH] [--steps 12] [--rounds 1] [--bf16]
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from datasets import Dataset
from trl import SFTTrainer

from pipeline.config.settings import TrainingSection, load_config
from pipeline.engine.model_store import embedded_checkpoint
from pipeline.methods.rise.method import RiseMethod
from pipeline.methods.rise.training import training_dataset
from pipeline.methods.rise.weighted_sft import WEIGHT, build_trainer, sft_config
from pipeline.training.launch import cpu_allocator
from pipeline.training.trainer import lora_config, peak_rss_gb

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DATA = REPO / "data" / "bench" / "quickstart_iter1_train.jsonl"
QUICKSTART = REPO / "configs" / "quickstart.yaml"
SEED = 0
TAU = 0.4
MATMUL_SIZE = 2048


def matmul_gflops(dtype: torch.dtype, repeats: int = 10) -> float:
    """Best-of-``repeats`` GFLOP/s of a square ``torch.mm`` on all of torch's threads."""
    a, b = (torch.randn(MATMUL_SIZE, MATMUL_SIZE).to(dtype) for _ in range(2))
    torch.mm(a, b)  # warm-up: thread pool, kernel choice
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * MATMUL_SIZE**3 / best / 1e9


def chats(count: int) -> Dataset:
    """Short two-attempt chats whose target is the second attempt, weighted exp(r / tau) with r alternating 0/1.

    ``bench/gpu_check.py`` trains on these (a GPU machine has no curated run data).
    """
    rows = []
    for i in range(count):
        a, b = i % 17 + 2, i % 13 + 3
        rows.append(
            {
                "prompt": [
                    {"role": "user", "content": f"What is {a} * {b}? Put the answer in \\boxed{{}}."},
                    {"role": "assistant", "content": f"{a} * {b} = \\boxed{{{a * b + 1}}}"},
                    {"role": "user", "content": "Your answer is incorrect. Please try again."},
                ],
                "completion": [{"role": "assistant", "content": f"Let me recompute: {a} * {b} = \\boxed{{{a * b}}}."}],
                WEIGHT: math.exp((i % 2) / TAU),
            }
        )
    return Dataset.from_list(rows)


def settings(batch_size: int) -> TrainingSection:
    return TrainingSection(lora_r=16, lora_alpha=32, lora_dropout=0.0, per_device_batch_size=batch_size)


def sft_settings(epochs: float = 1) -> RiseMethod:
    """RISE's section with the SFT settings the benchmark trains with."""
    return RiseMethod(epochs=epochs)


def plain_trainer(
    model: Path,
    data: Dataset,
    out: Path,
    training: TrainingSection,
    method: RiseMethod,
    use_cpu: bool = True,
    bf16: bool = False,
    max_steps: int = -1,
) -> SFTTrainer:
    """TRL's own SFTTrainer with exactly the arguments build_trainer uses."""
    args = sft_config(out, training, method, use_cpu=use_cpu, bf16=bf16, seed=SEED, max_steps=max_steps)
    args.save_strategy = "no"
    return SFTTrainer(
        model=str(model), args=args, train_dataset=data.remove_columns(WEIGHT), peft_config=lora_config(training)
    )


def weighted_trainer(
    model: Path,
    data: Dataset,
    out: Path,
    training: TrainingSection,
    method: RiseMethod,
    use_cpu: bool = True,
    bf16: bool = False,
    max_steps: int = -1,
) -> SFTTrainer:
    trainer = build_trainer(
        model, data, out, training, method, use_cpu=use_cpu, bf16=bf16, seed=SEED, max_steps=max_steps
    )
    trainer.args.save_strategy = "no"
    return trainer


CONTENDERS = {"plain": plain_trainer, "weighted": weighted_trainer}


def tokens_per_second(trainer: SFTTrainer) -> float:
    """Trained (non-padding) tokens over the training loop's own runtime."""
    runtime = trainer.train().metrics["train_runtime"]
    return trainer.state.num_input_tokens_seen / runtime


def contender(name: str, data: Path, steps: int, bf16: bool, out: str) -> dict[str, float]:
    """Train ``steps`` steps with one contender; its trained tokens/s, seconds a step, peak RSS and parameter count."""
    config = load_config(QUICKSTART)
    trainer = CONTENDERS[name](
        embedded_checkpoint(),
        training_dataset(data),
        Path(out),
        config.training,
        config.method,
        use_cpu=not torch.cuda.is_available(),
        bf16=bf16,
        max_steps=steps,
    )
    start = time.perf_counter()
    tokens_per_s = tokens_per_second(trainer)
    return {
        "tokens_per_s": tokens_per_s,
        "step_s": (time.perf_counter() - start) / steps,
        "peak_rss_gb": peak_rss_gb(),
        "parameters": sum(p.numel() for p in trainer.model.parameters()),
    }


def run_isolated(name: str, *args: object) -> dict[str, float]:
    """:func:`contender` in a fresh process (spawned: nothing of the parent's memory or threads carries over)."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(contender, (name, *args))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="a curated train.jsonl (iter_K/curate/)")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--bf16", action="store_true", help="train both in bfloat16 (default: float32)")
    opts = parser.parse_args()
    if not opts.data.is_file():
        parser.error(f"--data {opts.data}: no such file (a curated iter_K/curate/train.jsonl)")

    if allocator := cpu_allocator():
        os.environ["LD_PRELOAD"] = allocator  # the contenders' processes start with it, as the train stage's worker
    limits = {"float32": matmul_gflops(torch.float32), "bfloat16": matmul_gflops(torch.bfloat16)}
    dtype = "bfloat16" if opts.bf16 else "float32"
    results: dict[str, list[dict[str, float]]] = {"plain": [], "weighted": []}
    with tempfile.TemporaryDirectory() as tmp:
        for round_index in range(opts.rounds):
            order = list(results) if round_index % 2 == 0 else list(reversed(results))
            for name in order:
                out = str(Path(tmp) / f"{name}-{round_index}")
                result = run_isolated(name, opts.data, opts.steps, opts.bf16, out)
                results[name].append(result)
                print(
                    f"round {round_index} {name:8s} {result['tokens_per_s']:8.1f} tok/s, "
                    f"{result['step_s']:.2f} s/step, peak RSS {result['peak_rss_gb']:.2f} GB",
                    flush=True,
                )

    config = load_config(QUICKSTART)
    training = config.training
    print(
        f"\nmodel: SmolLM2-135M-Instruct, {QUICKSTART.name}'s training section (LoRA r {training.lora_r}, "
        f"{training.per_device_batch_size} x {training.gradient_accumulation_steps} examples a step, "
        f"{config.method.train_sampling_strategy}), {opts.data.name}, {opts.steps} steps, {opts.rounds} round(s), "
        f"trained in {dtype}, {torch.get_num_threads()} threads"
    )
    print(f"allocator: {os.environ.get('LD_PRELOAD') or 'the system malloc'}")
    print(
        f"matmul limit (torch.mm {MATMUL_SIZE}^2): float32 {limits['float32']:.1f} GFLOP/s, "
        f"bfloat16 {limits['bfloat16']:.1f} GFLOP/s"
    )
    median = {name: statistics.median(r["tokens_per_s"] for r in runs) for name, runs in results.items()}
    for name, label in (("plain", "plain SFTTrainer  "), ("weighted", "WeightedSFTTrainer")):
        runs = results[name]
        flops_per_token = 4 * runs[0]["parameters"]
        share = median[name] * flops_per_token / 1e9 / limits[dtype]
        print(
            f"{label} {median[name]:8.1f} tok/s (median), {share:6.1%} of the {dtype} matmul limit, "
            f"peak RSS {max(r['peak_rss_gb'] for r in runs):.2f} GB"
        )
    print(f"ratio weighted/plain {median['weighted'] / median['plain']:8.3f}")


if __name__ == "__main__":
    main()
