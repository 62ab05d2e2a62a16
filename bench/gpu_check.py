"""The GPU check: weighted SFT against plain TRL, an ExIt GRPO step on the hf backend, hf rollout throughput.

One command for a lent GPU machine (one H100/H200 with torch, transformers,
peft and accelerate, but no TRL and no vLLM: carry the missing wheels,
docs/benchmarks.md, "The GPU check"). It needs no network and no model download: the models are
random weights in the shapes of SmolLM2-135M (the quickstart's model) and
SmolLM2-1.7B, with the SmolLM2 tokenizer (``--tokenizer``, default the
embedded model's). Random weights time the same kernels as trained ones.

1. ``sft``: WeightedSFTTrainer against TRL's own SFTTrainer, bf16, LoRA r 16
   on all linear layers, the same batches (bench/train.py's chats and
   arguments), alternating rounds after an untimed warm-up round: trained
   tokens/s and peak GPU memory of each, and the ratios weighted / plain.
2. ``grpo``: ExIt's GRPO trainer (``ExitGRPOTrainer`` with its real rollout
   function, buffer and group log) generating through the ``hf`` backend on
   the same GPU. The policy is the 135M shape fully fine-tuned first on those
   chats, so that it answers in the task format, some answers right and some
   wrong: its groups have rewards that vary, hence advantages and a gradient.
   Seconds per step, groups with mixed rewards, mean reward.
3. ``rollout``: the ``hf`` backend (queued, batched ``chat`` calls, as the
   rollout engine drives it) against bare ``model.generate`` on the same
   left-padded prompts, at two batch sizes, on the 135M shape: generated
   tokens/s and the ratio.

    python bench/gpu_check.py [--out DIR] [--sections sft,grpo,rollout] [--tiny]

``--tiny`` swaps in the tests' tiny model shapes and runs on the CPU: a
seconds-long smoke run of the same code, for checking the script anywhere.
Figures are printed and written to ``DIR/gpu_check.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch
import train as sft_bench  # bench/train.py, beside this file
from anyio.from_thread import start_blocking_portal
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from pipeline.config.settings import parse_config
from pipeline.engine.generation import SamplingParams
from pipeline.engine.hf_backend import HFBackend
from pipeline.engine.model_store import embedded_checkpoint
from pipeline.methods.exit.buffer import LearnabilityBuffer
from pipeline.methods.exit.rollout import (
    ExitGenerator,
    ExitRollout,
    GroupLog,
    GroupRecords,
    PolicyServers,
    PromptFitter,
    Scoring,
    TrainingPrompts,
    chat_template_counter,
    prompt_index,
)
from pipeline.methods.exit.training import ExitGRPOTrainer, exit_reward, grpo_config
from pipeline.rollouts.service import pooled_grading
from pipeline.tasks import Task
from pipeline.training.trainer import lora_config
from rewards import get_grader
from rewards.pool import GradingPool

# (hidden, intermediate, layers, heads, kv heads) of the SmolLM2 checkpoints; "tiny" is the tests' model.
SHAPES: dict[str, tuple[int, int, int, int, int]] = {
    "smollm2-135m": (576, 1536, 30, 9, 3),
    "smollm2-1.7b": (2048, 8192, 24, 32, 32),
    "tiny": (128, 256, 2, 2, 1),
}
GRPO_STEPS = 6
ROLLOUT_PROMPTS = 32
ROLLOUT_SAMPLES = 4


def random_model(shape: str, tokenizer_dir: Path, target: Path) -> Path:
    """A bf16 Llama of the named shape with random weights and the SmolLM2 tokenizer and chat template."""
    hidden, intermediate, layers, heads, kv_heads = SHAPES[shape]
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):  # 1.7B initialises in seconds on a GPU
        LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target


def peak_gib() -> float | None:
    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None


def reset_peak() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def sft_section(model: Path, examples: int, batch_size: int, rounds: int, on_gpu: bool, work: Path) -> dict:
    """Plain against weighted SFT on one model, the same data and arguments, alternating which goes first."""
    data, training, method = sft_bench.chats(examples), sft_bench.settings(batch_size), sft_bench.sft_settings()
    contenders = {"plain": sft_bench.plain_trainer, "weighted": sft_bench.weighted_trainer}
    speed: dict[str, list[float]] = {name: [] for name in contenders}
    memory: dict[str, list[float]] = {name: [] for name in contenders}
    for round_index in range(-1, rounds):  # round -1 warms CUDA up and is not counted
        order = list(contenders) if round_index % 2 == 0 else list(reversed(contenders))
        for name in order:
            reset_peak()
            trainer = contenders[name](
                model, data, work / f"{name}-{round_index}", training, method, use_cpu=not on_gpu, bf16=on_gpu
            )
            tokens_per_s, peak = sft_bench.tokens_per_second(trainer), peak_gib()
            print(
                f"  round {round_index} {name:8s} {tokens_per_s:10.1f} tok/s"
                + (f", peak {peak:.2f} GiB" if peak is not None else ""),
                flush=True,
            )
            if round_index >= 0:
                speed[name].append(tokens_per_s)
                memory[name] += [peak] if peak is not None else []
            del trainer
    result = {
        name: {"tokens_per_s": statistics.median(speed[name]), "peak_gib": max(memory[name]) if memory[name] else None}
        for name in contenders
    }
    result["ratio_tokens_per_s"] = result["weighted"]["tokens_per_s"] / result["plain"]["tokens_per_s"]
    if on_gpu:
        result["ratio_peak_memory"] = result["weighted"]["peak_gib"] / result["plain"]["peak_gib"]
    result |= {"examples": examples, "batch_size": batch_size, "rounds": rounds}
    return result


def answering_policy(model: Path, examples: int, epochs: int, on_gpu: bool, work: Path) -> Path:
    """``model`` fully fine-tuned on bench/train.py's chats, saved with its tokenizer: it answers the products
    of :func:`grpo_tasks` in their format, rightly for those it has learned."""
    training = sft_bench.settings(16).model_copy(update={"finetune": "full", "learning_rate": 5e-4})
    trainer = sft_bench.weighted_trainer(
        model,
        sft_bench.chats(examples),
        work / "trainer",
        training,
        sft_bench.sft_settings(epochs),
        use_cpu=not on_gpu,
        bf16=on_gpu,
    )
    trainer.train()
    trainer.save_model(str(work / "model"))
    AutoTokenizer.from_pretrained(model).save_pretrained(work / "model")
    return work / "model"


def grpo_tasks(count: int) -> list[Task]:
    """Products in the phrasing of bench/train.py's chats (the same operand pairs), which the policy learned."""
    return [
        Task(f"mul-{a}x{b}", f"What is {a} * {b}? Put the answer in \\boxed{{}}.", a * b)
        for a, b in ((i % 17 + 2, i % 13 + 3) for i in range(count))
    ]


def grpo_config_for(model: Path, batch_groups: int, group_size: int) -> Any:
    """ExIt's method and training settings shaped like configs/exit_quickstart.yaml's (group, LoRA, token
    budget: what sets the work timed; kappa and the learning rate do not), on ``model``."""
    tasks = {"source": "arithmetic", "options": {"seed": 0, "n_train": 8, "n_eval": 8}}
    return parse_config(
        {
            "run": {"name": "gpu-check", "seed": 0, "report_to": []},
            "model": {"name_or_path": str(model), "max_model_len": 1024},
            "rollout": {"history_window": 1, "sampling": {"temperature": 0.8, "max_tokens": 64}},
            "tasks": {"train": tasks, "eval": tasks},
            "grader": {"name": "numeric"},
            "method": {
                "name": "exit",
                "buffer_capacity": 64,
                "min_buffer": 2,
                "select_prob": 0.5,
                "kappa": 1.0,
                "divergence_prob": 0.2,
                "group_size": group_size,
                "kl_beta": 0.0,
                "steps_per_iteration": GRPO_STEPS,
                "sync_every": 1,
            },
            "training": {
                "lora_r": 16,
                "lora_alpha": 32,
                "lora_dropout": 0.0,
                "learning_rate": 1.0e-4,
                "per_device_batch_size": batch_groups * group_size,
                "save_steps": 1000,
            },
        }
    )


def grpo_section(model: Path, on_gpu: bool, work: Path, batch_groups: int, group_size: int = 8) -> dict:
    """ExIt GRPO steps whose groups the hf backend generates on the trainer's own device."""
    config = grpo_config_for(model, batch_groups, group_size)
    tokenizer = AutoTokenizer.from_pretrained(model)
    tasks = prompt_index(grpo_tasks(64))
    grader = get_grader("numeric")

    reset_peak()
    with ExitStack() as stack:
        portal = stack.enter_context(start_blocking_portal())
        pool = stack.enter_context(GradingPool(1, 10.0))  # numeric grades inline: the pool only routes them
        backend = HFBackend(
            str(model),
            "bfloat16" if on_gpu else "float32",
            batch_size=batch_groups * group_size,
            device="cuda" if on_gpu else "cpu",
        )
        stack.callback(lambda: portal.call(backend.aclose))
        groups = GroupLog(work / "groups.jsonl", 0)
        stack.callback(groups.close)
        fitter = PromptFitter(
            config.rollout.templates,
            config.rollout.history_window,
            config.model.max_model_len - config.rollout.sampling.max_tokens,
            chat_template_counter(tokenizer),
        )
        generator = ExitGenerator(
            config,
            TrainingPrompts(tasks, fitter),
            GroupRecords(
                LearnabilityBuffer(config.method.buffer_capacity, config.method.kappa, seed=0),
                work / "buffer.json",
                groups,
            ),
            PolicyServers(backend, portal, work / "sync", "gpu-check"),
            Scoring(pooled_grading(pool, "numeric", {}), grader.binary),
            tokenizer.eos_token_id,
        )
        precision = "bf16" if on_gpu else "fp32"
        trainer = ExitGRPOTrainer(
            model=str(model),
            reward_funcs=[exit_reward],
            args=grpo_config(config, work / "checkpoints", precision=precision, use_cpu=not on_gpu),
            train_dataset=_prompts_dataset(list(tasks)),
            processing_class=tokenizer,
            peft_config=lora_config(config.training),
            rollout_func=ExitRollout(list(tasks), generator),
        )
        started = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - started
    records = [json.loads(line) for line in (work / "groups.jsonl").read_text().splitlines()]
    rewards = [r for record in records for r in record.get("rewards") or []]
    mixed = sum(1 for record in records if record.get("rewards") and len(set(record["rewards"])) > 1)
    return {
        "steps": trainer.state.global_step,
        "groups_per_step": batch_groups,
        "group_size": group_size,
        "seconds_per_step": seconds / max(trainer.state.global_step, 1),
        "failed_groups": sum(1 for record in records if record.get("error")),
        "groups": len(records),
        "groups_with_mixed_rewards": mixed,
        "mean_reward": statistics.fmean(rewards) if rewards else None,
        "peak_gib": peak_gib(),
        "precision": precision,
    }


def _prompts_dataset(prompts: list[str]) -> Any:
    from datasets import Dataset

    return Dataset.from_list([{"prompt": prompt} for prompt in prompts])


def rollout_messages(count: int) -> list[list[dict[str, str]]]:
    return [[{"role": "user", "content": task.prompt}] for task in grpo_tasks(count)]


def raw_generate_tokens(
    backend: HFBackend, conversations: list[list[dict[str, str]]], params: SamplingParams, batch_size: int, samples: int
) -> int:
    """Bare ``model.generate`` over the same rows in the same batches: generated tokens (stopping at EOS)."""
    tokenizer, model = backend.tokenizer, backend.model
    rows = [
        tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=True)
        for m in conversations
        for _ in range(samples)
    ]
    generated = 0
    for start in range(0, len(rows), batch_size):
        inputs = tokenizer(
            rows[start : start + batch_size], return_tensors="pt", padding=True, add_special_tokens=False
        ).to(backend.device)
        with torch.inference_mode():
            output = model.generate(
                **inputs,
                max_new_tokens=params.max_tokens,
                do_sample=True,
                temperature=params.temperature,
                top_p=None,
                top_k=None,
                pad_token_id=tokenizer.pad_token_id,
            )
        for row in output[:, inputs["input_ids"].shape[1] :].tolist():
            generated += row.index(tokenizer.eos_token_id) + 1 if tokenizer.eos_token_id in row else len(row)
    return generated


def rollout_section(model: Path, on_gpu: bool, batch_sizes: list[int], max_tokens: int) -> dict:
    """The hf backend against bare generate, at each batch size, on the same prompts and sampling."""
    conversations, params = rollout_messages(ROLLOUT_PROMPTS), SamplingParams(temperature=0.8, max_tokens=max_tokens)
    result: dict[str, Any] = {"prompts": ROLLOUT_PROMPTS, "samples": ROLLOUT_SAMPLES, "max_tokens": max_tokens}
    for batch_size in batch_sizes:
        backend = HFBackend(
            str(model), "bfloat16" if on_gpu else "float32", batch_size=batch_size, device="cuda" if on_gpu else "cpu"
        )

        async def ours() -> int:
            try:
                outs = await asyncio.gather(
                    *(backend.chat(m, ROLLOUT_SAMPLES, params, seed=i) for i, m in enumerate(conversations))
                )
                return sum(c.completion_tokens for out in outs for c in out)
            finally:
                await backend.aclose()

        raw_generate_tokens(backend, conversations[:4], params, batch_size, 1)  # warm-up
        timings = {}
        for name, run in (
            ("raw", lambda: raw_generate_tokens(backend, conversations, params, batch_size, ROLLOUT_SAMPLES)),
            ("hf_backend", lambda: asyncio.run(ours())),
        ):
            if on_gpu:
                torch.cuda.synchronize()
            started = time.perf_counter()
            tokens = run()
            timings[name] = tokens / (time.perf_counter() - started)
        result[f"batch_{batch_size}"] = {
            **{f"{k}_tokens_per_s": v for k, v in timings.items()},
            "ratio": timings["hf_backend"] / timings["raw"],
        }
        print(
            f"  batch {batch_size}: raw generate {timings['raw']:.0f} tok/s, hf backend "
            f"{timings['hf_backend']:.0f} tok/s, ratio {timings['hf_backend'] / timings['raw']:.3f}",
            flush=True,
        )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/gpu_check"))
    parser.add_argument("--sections", default="sft,grpo,rollout")
    parser.add_argument("--tokenizer", type=Path, default=None, help="a folder with the SmolLM2 tokenizer")
    parser.add_argument("--tiny", action="store_true", help="the tests' tiny shapes on the CPU: a smoke run")
    opts = parser.parse_args()
    sections = set(opts.sections.split(","))
    on_gpu = torch.cuda.is_available() and not opts.tiny
    shapes = ["tiny"] if opts.tiny else ["smollm2-135m", "smollm2-1.7b"]
    opts.out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "device": torch.cuda.get_device_name() if on_gpu else platform.processor() or "cpu",
        "torch": torch.__version__,
        "python": sys.version.split()[0],
    }
    import peft
    import transformers
    import trl

    report |= {"transformers": transformers.__version__, "trl": trl.__version__, "peft": peft.__version__}
    print(json.dumps(report), flush=True)
    tokenizer_dir = opts.tokenizer or embedded_checkpoint()
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        work = Path(tmp)
        models = {shape: random_model(shape, tokenizer_dir, work / shape) for shape in shapes}
        small = shapes[0]
        sizes = (
            {"sft": (32, 8), "policy": (32, 2), "rollout": ([4, 16], 8)}
            if opts.tiny
            else {"sft": (512, 16), "policy": (1024, 3), "rollout": ([16, 64], 96)}
        )

        def record(name: str, section: Any) -> None:
            started = time.perf_counter()
            report[name] = section()
            report[name]["section_seconds"] = time.perf_counter() - started
            (opts.out / "gpu_check.json").write_text(json.dumps(report, indent=2))  # whatever finished so far
            print(f"  {name}: {json.dumps(report[name])}", flush=True)

        for shape in shapes if "sft" in sections else []:
            print(f"sft on {shape}", flush=True)
            record(f"sft_{shape}", lambda: sft_section(models[shape], *sizes["sft"], 2, on_gpu, work / f"sft-{shape}"))
        if "grpo" in sections:
            print(f"grpo on {small}, fully fine-tuned first", flush=True)
            policy = answering_policy(models[small], *sizes["policy"], on_gpu, work / "policy")
            record("grpo", lambda: grpo_section(policy, on_gpu, work / "grpo", batch_groups=1 if opts.tiny else 4))
        if "rollout" in sections:
            print(f"rollout on {small}", flush=True)
            record(f"rollout_{small}", lambda: rollout_section(models[small], on_gpu, *sizes["rollout"]))
    print_summary(report)


def print_summary(report: dict[str, Any]) -> None:
    print("\n== summary ==")
    for key, value in report.items():
        if key.startswith("sft_"):
            memory = (
                (
                    f", peak memory {value['weighted']['peak_gib']:.2f} / {value['plain']['peak_gib']:.2f} GiB "
                    f"= {value['ratio_peak_memory']:.3f}"
                )
                if value["plain"]["peak_gib"]
                else ""
            )
            print(
                f"{key}: weighted {value['weighted']['tokens_per_s']:.0f} / plain "
                f"{value['plain']['tokens_per_s']:.0f} tok/s = {value['ratio_tokens_per_s']:.3f}{memory}"
            )
        elif key.startswith("rollout_"):
            for batch, figures in value.items():
                if batch.startswith("batch_"):
                    print(
                        f"{key} {batch}: hf backend {figures['hf_backend_tokens_per_s']:.0f} / raw generate "
                        f"{figures['raw_tokens_per_s']:.0f} tok/s = {figures['ratio']:.3f}"
                    )
        elif key == "grpo":
            print(
                f"grpo: {value['seconds_per_step']:.2f} s/step ({value['groups_per_step']} groups of "
                f"{value['group_size']}), {value['groups_with_mixed_rewards']}/{value['groups']} groups with "
                f"mixed rewards, mean reward {value['mean_reward']}, failed groups {value['failed_groups']}"
            )


if __name__ == "__main__":
    main()
