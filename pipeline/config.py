"""Run configuration: YAML validated by pydantic.

One :class:`PipelineConfig` describes a whole run. Every section forbids
unknown keys so that a typo fails before any work starts, and
:func:`load_config` reports each problem with the dotted path of the bad key
(``rollout.sampling.temperature: Input should be a valid number``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipeline.prompts import DEFAULT_TEMPLATES

EMBEDDED_MODEL = "embedded:smollm2-135m-instruct"


class ConfigError(ValueError):
    """A config that cannot be used; the message names every bad key."""


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class RunSection(StrictModel):
    name: str = Field("run", pattern=r"^[A-Za-z0-9_.-]+$", description="Run directory name under output_dir.")
    output_dir: Path = Path("runs")
    seed: int = 0
    iterations: int = Field(2, ge=0, description="Training iterations after the base-model eval (iteration 0).")


class ModelSection(StrictModel):
    name_or_path: str = Field(EMBEDDED_MODEL, description="Local directory, hub id, or the embedded default.")
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "bfloat16"
    max_model_len: int = Field(2048, gt=0)


class ServerSection(StrictModel):
    """Settings for the vLLM server the pipeline starts (ignored when ``rollout.urls`` is set)."""

    host: str = "127.0.0.1"
    port: int | None = Field(None, ge=1, le=65535, description="None picks a free port.")
    tensor_parallel_size: int = Field(1, ge=1)
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1)
    cpu_kvcache_space_gib: int = Field(2, ge=1, description="VLLM_CPU_KVCACHE_SPACE for the CPU build.")
    max_lora_rank: int = Field(16, ge=1)
    max_loras: int = Field(2, ge=1)
    max_num_seqs: int = Field(128, ge=1)
    chunked_prefill: bool | None = Field(
        None, description="None: off on the vllm-cpu build (seeded sampling crashes it there), vLLM's default elsewhere."
    )
    startup_timeout_s: float = Field(600, gt=0)
    max_restarts: int = Field(2, ge=0, description="Restarts after a crash before the stage fails.")
    extra_args: list[str] = Field(default_factory=list, description="Passed verbatim to the vLLM server.")


class SamplingSection(StrictModel):
    temperature: float = Field(0.7, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: int = Field(256, gt=0)
    stop: list[str] = Field(default_factory=list)


class TemplatesSection(StrictModel):
    """Prompt templates of the revision protocol; defaults in :mod:`pipeline.prompts`."""

    system: str | None = DEFAULT_TEMPLATES["system"]
    binary_feedback: str = DEFAULT_TEMPLATES["binary_feedback"]
    grader_feedback: str = DEFAULT_TEMPLATES["grader_feedback"]
    no_feedback: str = DEFAULT_TEMPLATES["no_feedback"]
    improve: str = DEFAULT_TEMPLATES["improve"]
    diverge: str = DEFAULT_TEMPLATES["diverge"]


class TeacherSection(StrictModel):
    """Another served model that answers turns > 1 (RISE distillation)."""

    url: str
    model: str
    api_key: str | None = None


class RolloutSection(StrictModel):
    backend: Literal["vllm", "hf"] = "vllm"
    urls: list[str] = Field(default_factory=list, description="Running servers to use instead of starting one.")
    server: ServerSection = Field(default_factory=ServerSection)
    max_concurrency: int = Field(64, ge=1)
    request_timeout_s: float = Field(300, gt=0)
    max_retries: int = Field(3, ge=0)
    hf_batch_size: int = Field(16, ge=1, description="Batch size of the hf backend.")
    serve_merged: bool = Field(
        False,
        description="Serve trained iterations as LoRA-merged checkpoints (faster on vLLM CPU) instead of adapters.",
    )
    turns: int = Field(3, ge=1)
    samples_per_turn: int = Field(4, ge=1, description="Best-of-N at each collection turn.")
    feedback: Literal["binary", "grader", "none"] = "binary"
    stop_at_success: bool = True
    history_window: int | None = Field(None, ge=1, description="Keep only the last W attempts in the prompt.")
    sampling: SamplingSection = Field(default_factory=SamplingSection)
    teacher: TeacherSection | None = None
    templates: TemplatesSection = Field(default_factory=TemplatesSection)


class TaskSourceSection(StrictModel):
    source: str
    options: dict[str, Any] = Field(default_factory=dict)
    limit: int | None = Field(None, ge=1)

    @field_validator("source")
    @classmethod
    def _known_source(cls, value: str) -> str:
        from pipeline.tasks import task_source_names

        return _require_known("task source", value, task_source_names())

    @field_validator("options")
    @classmethod
    def _files_exist(cls, options: dict[str, Any]) -> dict[str, Any]:
        for key, value in options.items():
            if key.endswith("path") and isinstance(value, str) and not Path(value).exists():
                raise ValueError(f"options.{key}: file not found: {value}")
        return options

    @model_validator(mode="after")
    def _options_fit_the_source(self) -> "TaskSourceSection":
        from pipeline.tasks import get_task_source

        _construct("options", get_task_source, self.source, self.options)
        return self


class TasksSection(StrictModel):
    train: TaskSourceSection
    eval: TaskSourceSection


class GraderSection(StrictModel):
    name: str = "numeric"
    options: dict[str, Any] = Field(default_factory=dict)
    workers: int = Field(2, ge=1, description="Grading worker processes.")
    timeout_s: float = Field(10.0, gt=0, description="Hard limit per graded response.")

    @field_validator("name")
    @classmethod
    def _known_grader(cls, value: str) -> str:
        from rewards import grader_names

        return _require_known("grader", value, grader_names())

    @model_validator(mode="after")
    def _options_fit_the_grader(self) -> "GraderSection":
        from rewards import get_grader

        _construct("options", get_grader, self.name, self.options)
        return self


class RiseSection(StrictModel):
    name: Literal["rise"] = "rise"
    mode: Literal["self_distill", "distill"] = "self_distill"
    selection: Literal["all", "better", "best", "success"] = "all"
    tau: float = Field(0.4, gt=0, description="Temperature of the weights exp(r / tau).")
    accumulate: bool = Field(True, description="Train on the data of all iterations so far.")
    train_from: Literal["base", "previous"] = Field("base", description="Retrain from the base or continue the previous adapter.")
    boost: bool = Field(False, description="Warm-up SFT on successful first-turn samples.")


class ExitSection(StrictModel):
    name: Literal["exit"] = "exit"
    buffer_capacity: int = Field(512, ge=1)
    min_buffer: int = Field(128, ge=0, description="B_min: items needed before the buffer is sampled.")
    select_prob: float = Field(0.5, ge=0, le=1)
    kappa: float = Field(1.0, description="Sampling weight exp(kappa * S).")
    divergence_prob: float = Field(0.2, ge=0, le=1)
    group_size: int = Field(8, ge=2)
    clip_eps: float = Field(0.2, gt=0)
    kl_beta: float = Field(0.0, ge=0)
    steps_per_iteration: int = Field(50, ge=1)
    sync_every: int = Field(1, ge=1)
    delta_max: float = Field(1.0, gt=0)
    diversity_bonus: bool = False
    eval_steps: int = Field(16, ge=1, description="Improvement steps at evaluation (K).")


class TrainingSection(StrictModel):
    finetune: Literal["lora", "qlora", "full"] = "lora"
    lora_r: int = Field(16, ge=1)
    lora_alpha: int = Field(32, ge=1)
    lora_dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: str | list[str] = "all-linear"
    learning_rate: float = Field(3e-4, gt=0)
    epochs: float = Field(2, gt=0)
    per_device_batch_size: int = Field(8, ge=1)
    gradient_accumulation_steps: int = Field(1, ge=1)
    max_seq_length: int = Field(1024, gt=0)
    warmup_ratio: float = Field(0.0, ge=0, lt=1)
    lr_scheduler: str = "cosine"
    gradient_checkpointing: bool = False
    save_steps: int = Field(50, ge=1)
    save_total_limit: int | None = Field(2, ge=1, description="Checkpoints kept for resuming; None keeps all.")
    accelerate_config: Path | None = Field(None, description="accelerate YAML; None runs a single process.")

    @field_validator("accelerate_config")
    @classmethod
    def _accelerate_config_exists(cls, value: Path | None) -> Path | None:
        if value is not None and not value.exists():
            raise ValueError(f"file not found: {value}")
        return value


class EvaluationSection(StrictModel):
    turns: int = Field(3, ge=1)
    samples: int = Field(1, ge=1, description="Trajectories per task (n of pass@k).")
    feedback: Literal["binary", "none"] = Field("binary", description="Without oracle: 'binary' always says incorrect.")
    sampling: SamplingSection = Field(default_factory=SamplingSection)


class PipelineConfig(StrictModel):
    run: RunSection = Field(default_factory=RunSection)
    model: ModelSection = Field(default_factory=ModelSection)
    rollout: RolloutSection = Field(default_factory=RolloutSection)
    tasks: TasksSection
    grader: GraderSection = Field(default_factory=GraderSection)
    method: Annotated[RiseSection | ExitSection, Field(discriminator="name")] = Field(default_factory=RiseSection)
    training: TrainingSection = Field(default_factory=TrainingSection)
    evaluation: EvaluationSection = Field(default_factory=EvaluationSection)

    @model_validator(mode="after")
    def _teacher_for_distillation(self) -> "PipelineConfig":
        if isinstance(self.method, RiseSection) and self.method.mode == "distill" and self.rollout.teacher is None:
            raise ValueError("method.mode 'distill' needs rollout.teacher (url and model of the teacher endpoint)")
        return self

    @model_validator(mode="after")
    def _greedy_means_one_sample(self) -> "PipelineConfig":
        # Identical greedy samples are useless, and vLLM refuses n > 1 at temperature 0.
        if self.rollout.samples_per_turn > 1 and self.rollout.sampling.temperature == 0:
            raise ValueError("rollout.samples_per_turn > 1 needs rollout.sampling.temperature > 0")
        if self.evaluation.samples > 1 and self.evaluation.sampling.temperature == 0:
            raise ValueError("evaluation.samples > 1 needs evaluation.sampling.temperature > 0")
        return self

    @model_validator(mode="after")
    def _checkpoints_need_a_managed_server(self) -> "PipelineConfig":
        # A trained checkpoint is served by starting a server on it; servers given by URL cannot switch models.
        if self.rollout.urls and (self.rollout.serve_merged or self.training.finetune == "full"):
            raise ValueError("rollout.urls cannot serve trained checkpoints: unset it, or use LoRA adapters "
                             "(training.finetune lora, rollout.serve_merged false)")
        return self

    @property
    def run_dir(self) -> Path:
        return self.run.output_dir / self.run.name


def _require_known(kind: str, name: str, known: list[str]) -> str:
    if name not in known:
        raise ValueError(f"unknown {kind} {name!r}; known: {', '.join(known)}")
    return name


def _construct(key: str, factory: Any, name: str, options: dict[str, Any]) -> None:
    """Build a task source or grader once, so bad options fail when the config loads."""
    try:
        factory(name, **options)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{key} do not fit {name!r}: {exc}") from None


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides; values are parsed as YAML (``3``, ``true``, ``[a, b]``)."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE with a dotted key, e.g. rollout.turns=3")
        node = data
        parts = key.strip().split(".")
        for depth, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {item!r}: {'.'.join(parts[: depth + 1])} is not a section")
            node = child
        node[parts[-1]] = yaml.safe_load(raw)
    return data


def parse_config(data: dict[str, Any], source: str = "config") -> PipelineConfig:
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, source)) from None


def load_config(path: str | Path, overrides: list[str] | None = None) -> PipelineConfig:
    """Read, override and validate a YAML run config."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return parse_config(apply_overrides(data, overrides or []), source=str(path))


def dump_config(config: PipelineConfig) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


def _format_errors(exc: ValidationError, source: str) -> str:
    lines = [f"{source}: {exc.error_count()} invalid setting(s):"]
    for error in exc.errors():
        loc = [str(part) for part in error["loc"]]
        if loc[:1] == ["method"] and loc[1:2] in (["rise"], ["exit"]):
            del loc[1]  # the union tag pydantic inserts for the discriminated section
        key = ".".join(loc) or "(top level)"
        message = error["msg"].removeprefix("Value error, ")
        lines.append(f"  {key}: {message}")
    return "\n".join(lines)
