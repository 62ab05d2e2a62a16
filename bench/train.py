"""Training throughput: WeightedSFTTrainer against plain TRL SFTTrainer, side by side.

Both train SmolLM2-135M-Instruct with LoRA (r 16, all-linear) on the same
short RISE-style chats (a question, a wrong first attempt, feedback, then the
target answer), with the same TRL arguments (``sft_config``: float32, seed,
batch size, steps), so they see the same batches.
Rounds alternate which contender goes first, so that machine noise hits both
alike; trainer construction (model load, tokenization) is excluded. Prints
the median trained tokens per second of each and the ratio weighted / plain.

    .venv/bin/python bench/train.py [--examples 64] [--batch-size 8] [--rounds 2] [--tiny]
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
from pathlib import Path

from datasets import Dataset
from trl import SFTTrainer

from pipeline.config.settings import TrainingSection
from pipeline.engine.model_store import embedded_checkpoint
from pipeline.methods.rise.weighted_sft import WEIGHT, build_trainer, sft_config
from pipeline.training.trainer import lora_config

TAU = 0.4
SEED = 0


def chats(count: int) -> Dataset:
    """Short two-attempt chats whose target is the second attempt, weighted exp(r / tau) with r alternating 0/1."""
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
    return TrainingSection(lora_r=16, lora_alpha=32, lora_dropout=0.0, per_device_batch_size=batch_size, epochs=1)


def plain_trainer(
    model: Path, data: Dataset, out: Path, training: TrainingSection, use_cpu: bool = True, bf16: bool = False
) -> SFTTrainer:
    """TRL's own SFTTrainer with exactly the arguments build_trainer uses."""
    args = sft_config(out, training, use_cpu=use_cpu, bf16=bf16, seed=SEED)
    args.save_strategy = "no"
    return SFTTrainer(
        model=str(model), args=args, train_dataset=data.remove_columns(WEIGHT), peft_config=lora_config(training)
    )


def weighted_trainer(
    model: Path, data: Dataset, out: Path, training: TrainingSection, use_cpu: bool = True, bf16: bool = False
) -> SFTTrainer:
    trainer = build_trainer(model, data, out, training, use_cpu=use_cpu, bf16=bf16, seed=SEED)
    trainer.args.save_strategy = "no"
    return trainer


def tokens_per_second(trainer: SFTTrainer) -> float:
    """Trained (non-padding) tokens over the training loop's own runtime."""
    tokens = sum(len(ids) for ids in trainer.train_dataset["input_ids"]) * trainer.args.num_train_epochs
    return tokens / trainer.train().metrics["train_runtime"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--tiny", action="store_true", help="use the tiny random model of the tests instead")
    opts = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        if opts.tiny:
            from tests.tiny_model import build_tiny_model

            model = build_tiny_model(Path(tmp) / "tiny")
        else:
            model = embedded_checkpoint()
        data, training = chats(opts.examples), settings(opts.batch_size)
        contenders = {"plain": plain_trainer, "weighted": weighted_trainer}
        results: dict[str, list[float]] = {name: [] for name in contenders}
        for round_index in range(opts.rounds):
            order = list(contenders) if round_index % 2 == 0 else list(reversed(contenders))
            for name in order:
                trainer = contenders[name](model, data, Path(tmp) / f"{name}-{round_index}", training)
                results[name].append(tokens_per_second(trainer))
                print(f"round {round_index} {name:8s} {results[name][-1]:9.1f} tok/s", flush=True)

    plain, weighted = (statistics.median(results[name]) for name in ("plain", "weighted"))
    print(f"model: {'tiny' if opts.tiny else 'SmolLM2-135M-Instruct'}, LoRA r {training.lora_r} all-linear, "
          f"{opts.examples} examples, batch {opts.batch_size}, {opts.rounds} rounds")
    print(f"plain SFTTrainer     {plain:9.1f} tok/s (median)")
    print(f"WeightedSFTTrainer   {weighted:9.1f} tok/s (median)")
    print(f"ratio weighted/plain {weighted / plain:9.3f}")


if __name__ == "__main__":
    main()
