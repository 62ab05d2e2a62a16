"""Naming and checking the LoRA adapters a run serves.

An iteration's adapter is served under a name derived from the run and the
iteration, so several runs can share one server without clashing.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from pipeline.system.atomic import make_temp_dir, publish_dir


class AdapterError(ValueError):
    """An adapter directory that cannot be served."""


def adapter_name(run_name: str, iteration: int) -> str:
    return f"{run_name}-iter{iteration}"


def check_adapter_dir(path: str | Path, max_lora_rank: int | None = None) -> Path:
    """Fail early, with the reason, on a missing or unservable PEFT adapter directory."""
    path = Path(path)
    config_file = path / "adapter_config.json"
    if not path.is_dir():
        raise AdapterError(f"adapter directory not found: {path}")
    if not config_file.is_file():
        raise AdapterError(f"{path} is not a PEFT adapter: no adapter_config.json")
    if not any((path / name).is_file() for name in ("adapter_model.safetensors", "adapter_model.bin")):
        raise AdapterError(f"{path} has no adapter weights (adapter_model.safetensors)")
    try:
        config = json.loads(config_file.read_text())
    except json.JSONDecodeError as exc:
        raise AdapterError(f"{config_file} is not valid JSON: {exc}") from None
    rank = config.get("r")
    if max_lora_rank is not None and isinstance(rank, int) and rank > max_lora_rank:
        raise AdapterError(
            f"adapter {path} has LoRA rank {rank} > rollout.server.max_lora_rank {max_lora_rank}; raise the latter"
        )
    return path


def merge_adapter(base_model: str | Path, adapter_dir: str | Path, out_dir: str | Path) -> Path:
    """Write ``base_model`` with the LoRA of ``adapter_dir`` folded into its weights, tokenizer included.

    vLLM's CPU build serves a merged checkpoint much faster than the same
    weights as a runtime LoRA (``bench/lora_serving.py``). The checkpoint is
    saved in the base model's dtype into a temp directory beside ``out_dir``
    and published into place (:func:`~pipeline.system.atomic.publish_dir`: synced, then renamed), so a crash
    never leaves a half-written model.
    """
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_dir(out_dir.parent, f".{out_dir.name}-")
    try:
        model = AutoModelForCausalLM.from_pretrained(str(base_model), dtype="auto")
        merged = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
        merged.save_pretrained(tmp)
        AutoTokenizer.from_pretrained(str(base_model)).save_pretrained(tmp)
        publish_dir(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir
