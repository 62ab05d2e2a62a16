"""A tiny random-weights Llama with the SmolLM2 tokenizer, and LoRA adapters trained on it, for fast real tests.

Real vLLM servers and real TRL training run on it in seconds; its outputs are
gibberish, which is fine: tests check plumbing, not quality.
"""

from __future__ import annotations

from pathlib import Path


def build_tiny_model(target: Path, seed: int = 0) -> Path:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from pipeline.engine.model_store import embedded_checkpoint

    tokenizer = AutoTokenizer.from_pretrained(embedded_checkpoint())
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=64,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
        # Large enough that logits can be confident: a LoRA trained for a few
        # steps must visibly change greedy output.
        initializer_range=0.2,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target


def train_tiny_adapter(tiny_model: Path, pairs: list[tuple[str, str]], out: Path) -> Path:
    """A LoRA adapter trained for a few steps by TRL's SFTTrainer on one-turn (prompt, answer) ``pairs``,
    with a learning rate high enough to change greedy output; returns the adapter's directory."""
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    rows = [
        {"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]}
        for prompt, answer in pairs
    ]
    trainer = SFTTrainer(
        model=str(tiny_model),
        args=SFTConfig(
            output_dir=str(out / "trainer"),
            max_steps=16,
            per_device_train_batch_size=8,
            learning_rate=2e-2,
            logging_steps=100,
            save_strategy="no",
            report_to=[],
            use_cpu=True,
            bf16=False,
            disable_tqdm=True,
        ),
        train_dataset=Dataset.from_list(rows),
        peft_config=LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM"),
    )
    trainer.train()
    trainer.model.save_pretrained(out / "adapter")
    return out / "adapter"
