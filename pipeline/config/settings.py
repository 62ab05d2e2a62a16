"""Run configuration: YAML validated by pydantic.

One :class:`PipelineConfig` describes a whole run. Every section forbids
unknown keys so that a typo fails before any work starts, and
:func:`load_config` reports each problem with the dotted path of the bad key
(``rollout.sampling.temperature: Input should be a valid number``).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from pipeline.config.choices import Backend, FeedbackMode, Finetune, TrackerName
from pipeline.config.launch import LaunchSettings, unreadable_yaml
from pipeline.config.methods import DEFAULT_METHOD, METHODS, method_section, method_sections
from pipeline.config.prompts import DEFAULT_TEMPLATES
from pipeline.config.reference import key_link
from pipeline.config.sections import StrictModel, attempts_shown

if TYPE_CHECKING:
    from pipeline.tasks import Task

EMBEDDED_MODEL = "embedded:smollm2-135m-instruct"
# A Hugging Face hub id as the hub defines one: an optional owner, then the name, of letters, digits, - _ and .
HUB_ID = re.compile(r"^(?:[\w.-]+/)?[\w.-]{1,96}$")


# Keys of the shared sections that only RISE read, now in its ``method`` section: a config that still sets one
# is refused with its new place (read silently under its old name, it would have no effect).
MOVED_KEYS = {
    "rollout.turns": "method.turns",
    "rollout.samples_per_turn": "method.samples_per_turn",
    "rollout.feedback": "method.feedback",
    "rollout.stop_at_success": "method.stop_at_success",
    "rollout.teacher": "method.teacher",
    "training.epochs": "method.epochs",
    "training.max_seq_length": "method.max_seq_length",
    "training.loss_normalization": "method.loss_normalization",
    "training.train_sampling_strategy": "method.train_sampling_strategy",
}


class ConfigError(ValueError):
    """A config that cannot be used; the message names every bad key."""


class RunSection(StrictModel):
    name: str = Field(
        "run", pattern=r"^[A-Za-z0-9_.-]+$", description="The run directory's name: the run lives in `output_dir/name`."
    )
    output_dir: Path = Field(Path("runs"), description="The folder that holds run directories.")
    seed: int = Field(
        0,
        ge=0,
        le=2**32 - 1,
        description="Seeds every request (per task, sample and turn; stable "
        "across resumes) and training; at most NumPy's largest seed, which training's set_seed needs.",
    )
    iterations: int = Field(2, ge=0, description="Training iterations after the base-model eval (iteration 0).")
    report_to: list[TrackerName] = Field(
        default_factory=lambda: [TrackerName.TENSORBOARD],
        description="Experiment trackers the training and the pipeline log into, on one global step: `tensorboard` "
        "(local files only) and/or `wandb` (the `tracking` extra; offline unless `WANDB_MODE=online`); `[]` logs "
        "nowhere.",
    )

    @field_validator("report_to")
    @classmethod
    def _each_tracker_once_and_installed(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError(f"names a tracker twice: {value}")
        missing = [name for name in value if importlib.util.find_spec(name) is None]
        if missing:
            raise ValueError(f"{', '.join(missing)} is not installed: `pip install -e '.[tracking]'`")
        return value

    @field_validator("output_dir")
    @classmethod
    def _can_hold_runs(cls, value: Path) -> Path:
        existing = next((path for path in (value, *value.parents) if path.exists()), None)
        if existing is not None and not existing.is_dir():
            raise ValueError(f"{existing} is a file, not a directory")
        return value

    @field_validator("name")
    @classmethod
    def _one_directory(cls, value: str) -> str:
        # "." and ".." pass the pattern but would put the run in output_dir itself or in its parent.
        if value in (".", ".."):
            raise ValueError(f"must name a directory inside run.output_dir, not {value!r}")
        return value


class ModelSection(StrictModel):
    name_or_path: str = Field(
        EMBEDDED_MODEL,
        description="A local checkpoint directory, a hub id, or the embedded "
        "SmolLM2-135M-Instruct (converted once into `~/.cache/selfimprove`, or "
        "`$SELFIMPROVE_CACHE`).",
    )
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        "auto",
        description="The dtype served and trained in. `auto`: bfloat16 on a GPU or a CPU that computes it "
        "natively (AVX512-BF16 or AMX), else float32.",
    )
    max_model_len: int = Field(
        2048,
        gt=0,
        description="The context in tokens (vLLM's `--max-model-len`): every request's prompt and answer must fit it.",
    )

    @field_validator("name_or_path")
    @classmethod
    def _loadable(cls, value: str) -> str:
        """A local checkpoint directory, a hub id or the embedded model (what ``engine.model_store.resolve_model``
        loads). ``resolve_model`` takes any name that is no directory for a hub id, so a mistyped path would fail
        only when the server downloads it; a name of the hub's form (``owner/name``) that does not exist here is
        still taken for one."""
        path = Path(value).expanduser()
        if path.exists():
            if not (path / "config.json").is_file():
                raise ValueError(f"model directory {path} has no config.json")
            return value
        if value == EMBEDDED_MODEL or (HUB_ID.match(value) and ".." not in value and "--" not in value):
            return value
        raise ValueError(f"{value}: no such model directory, and not a hub id (owner/name) or {EMBEDDED_MODEL!r}")


class ServerSection(StrictModel):
    """Settings for the vLLM server the pipeline starts (ignored when ``rollout.urls`` is set)."""

    host: str = Field("127.0.0.1", description="The address the servers listen on; `0.0.0.0` accepts other machines.")
    port: int | None = Field(
        None, ge=1, le=65535, description="null picks a free port; with several replicas, replica i uses port + i."
    )
    tensor_parallel_size: int = Field(1, ge=1, description="GPUs per replica (vLLM --tensor-parallel-size).")
    replicas: int = Field(
        1,
        ge=1,
        description="Data-parallel servers the pipeline (or `selfimprove serve`) starts "
        "side by side, each on its own port and GPUs; requests go to the one with the fewest in "
        "flight, and adapters are loaded into all.",
    )
    gpu_ids: list[int] | None = Field(
        None,
        description="GPUs of the replicas, tensor_parallel_size each, in order (their CUDA_VISIBLE_DEVICES); "
        "null: one replica keeps the pipeline's GPUs, several take consecutive slices of them.",
    )
    gpu_memory_utilization: float = Field(
        0.9, gt=0, le=1, description="The share of each GPU's memory vLLM may use (`--gpu-memory-utilization`)."
    )
    cpu_kvcache_space_gib: int = Field(
        2, ge=1, description="The KV cache in GiB on vLLM's CPU build (VLLM_CPU_KVCACHE_SPACE)."
    )
    cpu_reserved_cores: int | None = Field(
        0,
        ge=0,
        description="Cores vLLM's CPU build keeps off the model for its scheduler process "
        "(VLLM_CPU_NUM_OF_RESERVED_CPU): 0 runs the model on every core; null keeps vLLM's default, one core per "
        "worker.",
    )
    max_lora_rank: int = Field(
        16,
        ge=1,
        description="The largest LoRA rank served (`--max-lora-rank`); a larger "
        "adapter fails before the server is asked.",
    )
    max_loras: int = Field(2, ge=1, description="Adapters a server holds at once (`--max-loras`).")
    max_num_seqs: int = Field(128, ge=1, description="Sequences a server batches at once (`--max-num-seqs`).")
    chunked_prefill: bool | None = Field(
        None,
        description="null: off on the vllm-cpu build (its engine crashes when a seeded request's prefill is "
        "split into chunks), vLLM's default elsewhere; true or false overrides.",
    )
    startup_timeout_s: float = Field(
        600, gt=0, description="Seconds a server may take to answer `/health` before the stage fails."
    )
    max_restarts: int = Field(
        2,
        ge=0,
        description="Restarts of a crashed server (its adapters loaded again, its "
        "unfinished requests re-sent) before the stage fails.",
    )
    extra_args: list[str] = Field(default_factory=list, description="Arguments passed verbatim to the vLLM server.")

    @model_validator(mode="after")
    def _gpu_ids_fill_the_replicas(self) -> ServerSection:
        if self.gpu_ids is None:
            return self
        needed = self.replicas * self.tensor_parallel_size
        if len(self.gpu_ids) != needed:
            raise ValueError(
                f"rollout.server.gpu_ids lists {len(self.gpu_ids)} GPU(s), but replicas ({self.replicas}) x "
                f"tensor_parallel_size ({self.tensor_parallel_size}) need {needed}"
            )
        _check_gpu_ids("rollout.server.gpu_ids", self.gpu_ids)
        return self

    @model_validator(mode="after")
    def _replica_ports_exist(self) -> ServerSection:
        if self.port is not None and self.port + self.replicas - 1 > 65535:
            raise ValueError(
                f"rollout.server.port {self.port} + replicas ({self.replicas}) - 1 is above 65535: "
                "replica i listens on port + i"
            )
        return self


class SamplingSection(StrictModel):
    """How one kind of request samples: collection and GRPO (``rollout.sampling``) or evaluation."""

    temperature: float = Field(
        0.7, ge=0, description="Sampling temperature; 0 is greedy, and then a request can draw only one sample."
    )
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling: the probability mass sampled from.")
    max_tokens: int = Field(
        256,
        gt=0,
        description="The longest answer in tokens. With the earlier attempts a turn's "
        "prompt shows uncut (`turns - 1` of RISE's `method.turns` or of `evaluation.turns`, cut by "
        "`history_window`; each up to `max_tokens`), it "
        "must be below `model.max_model_len`; ExIt cuts its prompts to fit, so there `max_tokens` "
        "alone must be.",
    )
    stop: list[str] = Field(default_factory=list, description="Strings that end an answer.")


class TemplatesSection(StrictModel):
    """Prompt templates of the revision protocol; defaults in :mod:`pipeline.config.prompts`."""

    system: str | None = Field(
        DEFAULT_TEMPLATES["system"], description="The system message of every conversation; null: none."
    )
    binary_feedback: str = Field(
        DEFAULT_TEMPLATES["binary_feedback"],
        description="The user message after an answer with `binary` feedback (in evaluation, whatever the truth).",
    )
    grader_feedback: str = Field(
        DEFAULT_TEMPLATES["grader_feedback"],
        description="The user message after an answer "
        "with `grader` feedback; `{feedback}` receives the grader's own text.",
    )
    no_feedback: str = Field(
        DEFAULT_TEMPLATES["no_feedback"],
        description="The user message after an answer with `none` feedback: a request to review it.",
    )
    hint: str = Field(
        DEFAULT_TEMPLATES["hint"],
        description="`method.rationalize`'s rewrite of the last user message "
        "of a state no sample solved: `{message}` is that message, `{reference}` the reference answer.",
    )
    improve: str = Field(
        DEFAULT_TEMPLATES["improve"],
        description="The request for an improvement: an ExIt step, and "
        "the user message after an answer with `improve` feedback.",
    )
    diverge: str = Field(
        DEFAULT_TEMPLATES["diverge"],
        description="ExIt's divergence prompt (with probability "
        "`method.divergence_prob`): an improvement by a significantly different approach.",
    )


class RolloutSection(StrictModel):
    backend: Backend = Field(
        Backend.VLLM,
        description="`vllm` (servers the pipeline starts, or "
        "`rollout.urls`) or `hf` (transformers' `generate`, the fallback).",
    )
    urls: list[str] = Field(
        default_factory=list,
        description="Running servers to use instead of starting one; "
        "requests spread across them. Trained iterations are then served as LoRA adapters.",
    )
    server: ServerSection = Field(default_factory=ServerSection, description="The vLLM servers the pipeline starts.")
    max_concurrency: int = Field(64, ge=1, description="Requests in flight at once.")
    request_timeout_s: float = Field(300, gt=0, description="Seconds before a request is given up and retried.")
    max_retries: int = Field(
        3,
        ge=0,
        description="Retries of a failed request, backing off exponentially; then its trajectory ends with the error.",
    )
    hf_batch_size: int = Field(16, ge=1, description="Batch size of the hf backend.")
    serve_merged: bool = Field(
        False,
        description="Serve trained iterations as LoRA-merged checkpoints instead of runtime adapters (faster on "
        "vLLM's CPU build); needs a managed server (no `rollout.urls`). ExIt's training still syncs its adapter; its "
        "eval serves a merged copy.",
    )
    history_window: int | None = Field(
        None, ge=1, description="Keep only the last W attempts in a turn's prompt; null: all."
    )
    sampling: SamplingSection = Field(
        default_factory=SamplingSection, description="How collection and GRPO requests sample."
    )
    templates: TemplatesSection = Field(
        default_factory=TemplatesSection, description="The prompts of the revision protocol."
    )


class TaskSourceSection(StrictModel):
    """One split's tasks: a task source by name, with its options."""

    source: str = Field(
        description="The task source: a built-in name (docs/tasks-and-graders.md lists them and their "
        "options), an installed plugin's, or your own as `module:attr` or `path/to/file.py:attr` "
        "(docs/your-own-task.md)."
    )
    options: dict[str, Any] = Field(
        default_factory=dict,
        description="The task source's options; a key ending in `path` must name an existing file.",
    )
    limit: int | None = Field(None, ge=1, description="Keep the first this many tasks of the split; null: all.")

    @field_validator("source")
    @classmethod
    def _known_source(cls, value: str) -> str:
        """A built-in name, else the user's source loads now: an import error fails the config, not a stage."""
        from pipeline.tasks import task_source_names
        from pipeline.tasks.plugins import load_task_source_plugin

        if value not in task_source_names():
            load_task_source_plugin(value)
        return value

    @field_validator("options")
    @classmethod
    def _files_exist(cls, options: dict[str, Any]) -> dict[str, Any]:
        for key, value in options.items():
            if key.endswith("path") and isinstance(value, str) and not Path(value).exists():
                raise ValueError(f"options.{key}: file not found: {value}")
        return options

    @model_validator(mode="after")
    def _options_fit_the_source(self) -> TaskSourceSection:
        from pipeline.tasks import get_task_source

        _construct("options", get_task_source, self.source, self.options)
        return self


class TasksSection(StrictModel):
    train: TaskSourceSection = Field(description="The training tasks (RISE's collection, ExIt's fresh groups).")
    eval: TaskSourceSection = Field(description="The held-out tasks every eval runs.")


def max_grading_workers() -> int:
    """The most grading workers a config may ask for: 4 per CPU this process may use (not ``os.cpu_count``, which
    counts the CPUs a container or ``taskset`` keeps from it), and at least 8.

    A grader computes (a sympy comparison) or waits on the sandbox's child
    process (a test run), so a few workers per core keep the cores busy;
    beyond that each worker is only a process's memory and start-up, and
    100,000 of them is a fork bomb. The floor of 8 keeps a config written for
    a bigger machine (configs/ use 8) loadable for a dry run on a small one.
    """
    return max(8, 4 * len(os.sched_getaffinity(0)))


class GraderSection(StrictModel):
    name: str = Field(
        "numeric",
        description="The grader: a built-in name (docs/tasks-and-graders.md lists them and "
        "their options), an installed plugin's, or your own class or function as `module:attr` or "
        "`path/to/file.py:attr` (docs/your-own-task.md).",
    )
    options: dict[str, Any] = Field(
        default_factory=dict, description="The grader's options (a function grader gets them as keyword arguments)."
    )
    workers: int = Field(
        2,
        ge=1,
        description="Grading worker processes (`math`, `code`, `reasoning_gym` and your own "
        "functions; `numeric` grades in-process); at most 4 per CPU, or 8.",
    )
    timeout_s: float = Field(
        10.0, gt=0, description="Hard limit in seconds per graded response; a response over it scores 0."
    )

    @field_validator("name")
    @classmethod
    def _known_grader(cls, value: str) -> str:
        """A built-in name, else the user's grader loads now: an import error fails the config, not a stage."""
        from rewards import grader_names
        from rewards.plugin_grader import load_grader_plugin

        if value not in grader_names():
            load_grader_plugin(value)
        return value

    @field_validator("workers")
    @classmethod
    def _workers_the_machine_can_use(cls, value: int) -> int:
        if value > (most := max_grading_workers()):
            raise ValueError(f"{value} is more than this machine can use: at most {most} (4 per CPU, at least 8)")
        return value

    @model_validator(mode="after")
    def _options_fit_the_grader(self) -> GraderSection:
        from rewards import get_grader

        _construct("options", get_grader, self.name, self.options)
        return self


class TrainingSection(StrictModel):
    finetune: Finetune = Field(
        Finetune.LORA, description="`lora`, `qlora` (LoRA on the base loaded in 4-bit NF4 by bitsandbytes) or `full`."
    )
    lora_r: int = Field(16, ge=1, description="LoRA rank.")
    lora_alpha: int = Field(32, ge=1, description="LoRA alpha (the update is scaled by alpha / r).")
    lora_dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on LoRA's input.")
    target_modules: str | list[str] = Field(
        "all-linear", description="The modules LoRA adapts: `all-linear` or a list of module names."
    )
    learning_rate: float = Field(3e-4, gt=0, description="Peak learning rate.")
    per_device_batch_size: int = Field(8, ge=1, description="Examples per process in a micro-batch.")
    gradient_accumulation_steps: int = Field(
        1,
        ge=1,
        description="Micro-batches per optimizer step: a step covers "
        "processes x per_device_batch_size x this many examples.",
    )
    warmup_ratio: float = Field(0.0, ge=0, lt=1, description="The share of the steps that warm the learning rate up.")
    lr_scheduler: str = Field(
        "cosine", description="transformers' learning-rate schedule (`cosine`, `linear`, `constant`, ...)."
    )
    gradient_checkpointing: bool = Field(
        False, description="Recompute activations in the backward pass: less memory, more compute."
    )
    save_steps: int = Field(
        50,
        ge=1,
        description="A checkpoint every this many optimizer steps; an interrupted train "
        "stage resumes from the newest complete one.",
    )
    save_total_limit: int | None = Field(2, ge=1, description="Checkpoints kept for resuming; null keeps all.")
    accelerate_config: Path | None = Field(
        None,
        description="An accelerate YAML for `accelerate launch` (configs/accelerate/: DDP, FSDP2, DeepSpeed "
        "ZeRO-2/3, 2 machines, CPU); null: plain processes (one on a CPU without CUDA, or num_processes under "
        "torchrun).",
    )
    num_processes: int | None = Field(
        None,
        ge=1,
        description="Training processes on all machines together, dividing evenly among them; null: the "
        "accelerate config's, else 1.",
    )
    num_machines: int | None = Field(
        None, ge=1, description="Machines taking part; null: the accelerate config's, else 1."
    )
    main_process_ip: str | None = Field(
        None,
        description="Machine 0's address as the other machines reach it; needed "
        "with several machines (null: the accelerate config's).",
    )
    main_process_port: int | None = Field(
        None,
        ge=1,
        le=65535,
        description="Machine 0's rendezvous port (null: the accelerate config's; a single machine picks a free port).",
    )
    gpu_ids: list[int] | None = Field(
        None, description="GPUs each machine trains on, one per process (CUDA_VISIBLE_DEVICES); null: all."
    )
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = Field(
        "auto",
        description="auto: bf16 where model.dtype runs as bfloat16 (a GPU, a CPU with native bfloat16), "
        "else no (float32); fp16 keeps float32 weights under fp16 autocast with loss scaling. Overrides the "
        "accelerate config's.",
    )

    @field_validator("accelerate_config")
    @classmethod
    def _accelerate_config_exists(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(
                f"{value} is a directory, not an accelerate config file"
                if value.is_dir()
                else f"file not found: {value}"
            )
        return value

    @model_validator(mode="after")
    def _launch_settings_agree(self) -> TrainingSection:
        """Catch what ``accelerate launch`` would do silently wrong (one process instead of N) or fail on late."""
        launch = LaunchSettings.of(self)
        problems = launch.problems()
        if self.gpu_ids is not None:
            _check_gpu_ids("training.gpu_ids", self.gpu_ids)
            if len(self.gpu_ids) != launch.processes_per_machine:
                problems.append(
                    f"training.gpu_ids lists {len(self.gpu_ids)} GPU(s), but each machine runs "
                    f"{launch.processes_per_machine} training process(es), one per GPU"
                )
        if self.finetune == Finetune.QLORA and launch.shards_parameters:
            problems.append(
                "training.finetune 'qlora' does not run under FSDP or DeepSpeed ZeRO-3 here "
                "(4-bit weights cannot be sharded): use DDP (configs/accelerate/ddp.yaml) or 'lora'"
            )
        if problems:
            raise ValueError("; ".join(problems))
        return self


def _check_gpu_ids(key: str, gpu_ids: list[int]) -> None:
    if any(gpu < 0 for gpu in gpu_ids) or len(set(gpu_ids)) != len(gpu_ids):
        raise ValueError(f"{key} must be distinct GPU indices >= 0, got {gpu_ids}")


class EvaluationSection(StrictModel):
    turns: int = Field(3, ge=2, description="Turns T; at least 2, since evaluation measures revision.")
    samples: int = Field(
        1,
        ge=1,
        description="Trajectories per task (n of pass@k); with fewer than T, T extra "
        "first-turn answers per task are drawn for the parallel baseline.",
    )
    feedback: Literal[FeedbackMode.BINARY, FeedbackMode.NONE, FeedbackMode.IMPROVE] = Field(
        FeedbackMode.BINARY,
        description="The user message after every answer, never revealing correctness: `binary` always "
        'says "incorrect", `none` asks for a review, `improve` for an improvement (ExIt: turn t is improvement '
        "step t-1).",
    )
    sampling: SamplingSection = Field(default_factory=SamplingSection, description="How eval requests sample.")
    history_window: int | None = Field(
        None,
        ge=1,
        description="Keep only the last W attempts in an eval turn's prompt (RISE's --context_window is W + 1), so "
        "an eval can run more turns than training saw; null: rollout.history_window. Recorded in eval.json.",
    )


class PipelineConfig(StrictModel):
    run: RunSection = Field(
        default_factory=RunSection, description="Where the run lives and how many iterations it goes."
    )
    model: ModelSection = Field(default_factory=ModelSection, description="The base model every iteration starts from.")
    rollout: RolloutSection = Field(
        default_factory=RolloutSection,
        description="How the model is served and asked: "
        "RISE's collection, ExIt's GRPO groups, and the servers of every stage.",
    )
    tasks: TasksSection = Field(description="The training tasks and the held-out tasks.")
    grader: GraderSection = Field(
        default_factory=GraderSection, description="The grader that scores every answer, and its process pool."
    )
    # Each registered method's class (pipeline/config/methods.py), told apart by its name.
    method: Annotated[Union[method_sections()], Field(discriminator="name")] = Field(  # type: ignore[valid-type]  # noqa: UP007 (built at run time)
        default_factory=lambda: method_section(DEFAULT_METHOD)(name=DEFAULT_METHOD),
        description="The method and its settings, told apart by `name`.",
    )
    training: TrainingSection = Field(
        default_factory=TrainingSection,
        description="How each iteration trains: the "
        "fine-tuning, the optimizer, and the processes and machines it runs on.",
    )
    evaluation: EvaluationSection = Field(
        default_factory=EvaluationSection,
        description="How every eval runs: T turns per held-out task, never told whether an answer was right.",
    )

    @model_validator(mode="before")
    @classmethod
    def _method_named(cls, data: Any) -> Any:
        """A ``method`` section without a ``name`` is the default method's, as a config without one is: so
        ``--set method.turns=3`` needs no ``--set method.name=rise`` beside it."""
        if isinstance(data, dict) and isinstance(data.get("method"), dict) and "name" not in data["method"]:
            return {**data, "method": {"name": DEFAULT_METHOD, **data["method"]}}
        return data

    @model_validator(mode="before")
    @classmethod
    def _no_moved_keys(cls, data: Any) -> Any:
        """Refuse each key of :data:`MOVED_KEYS` the config sets, naming its new place (and whether the config's
        method has it), before any other check can report it as unknown."""
        if not isinstance(data, dict):
            return data
        method = data.get("method")
        name = method.get("name", DEFAULT_METHOD) if isinstance(method, dict) else DEFAULT_METHOD
        fields = method_section(name).model_fields if name in METHODS else {}
        moved = [
            f"{old} moved to {new}" + ("" if new.split(".")[1] in fields else f", which method {name!r} does not have")
            for old, new in MOVED_KEYS.items()
            if _holds(data, old.split("."))
        ]
        if moved:
            raise ValueError("; ".join(moved))
        return data

    @model_validator(mode="after")
    def _greedy_means_one_sample(self) -> PipelineConfig:
        # Identical greedy samples are useless, and vLLM refuses n > 1 at temperature 0 (the method checks its own).
        if self.evaluation.samples > 1 and self.evaluation.sampling.temperature == 0:
            raise ValueError("evaluation.samples > 1 needs evaluation.sampling.temperature > 0")
        return self

    @model_validator(mode="after")
    def _token_budgets_fit_the_context(self) -> PipelineConfig:
        """Every request of both sampling sections must fit the model with its full answer: vLLM refuses one whose
        max_tokens or prompt exceeds model.max_model_len (HTTP 400: every request of the stage fails) and cuts the
        answer short where the prompt leaves less room. A turn's prompt carries the earlier attempts it shows uncut,
        each up to max_tokens long; the rollout's count is the method's (``rollout_attempts_shown``)."""
        rollout = _budget_problem("rollout", self.rollout.sampling, self.method.rollout_attempts_shown(self), self)
        problems = [problem for problem in (rollout, eval_budget_problem(self, self.evaluation.turns)) if problem]
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @model_validator(mode="after")
    def _checkpoints_need_a_managed_server(self) -> PipelineConfig:
        # A trained checkpoint is served by starting a server on it; servers given by URL cannot switch models.
        if self.rollout.urls and (self.rollout.serve_merged or self.training.finetune == Finetune.FULL):
            raise ValueError(
                "rollout.urls cannot serve trained checkpoints: unset it, or use LoRA adapters "
                "(training.finetune lora, rollout.serve_merged false)"
            )
        return self

    @model_validator(mode="after")
    def _reasoning_gym_tasks_meet_their_grader(self) -> PipelineConfig:
        # A reasoning_gym task's reference names a generated entry, which only that grader reads, and it reads
        # nothing else: any other pairing scores every answer as a grading failure.
        grader = self.grader.name == "reasoning_gym"
        for split, section in (("train", self.tasks.train), ("eval", self.tasks.eval)):
            if (section.source == "reasoning_gym") != grader:
                raise ValueError(
                    f"tasks.{split}.source {section.source!r} with grader.name {self.grader.name!r}: "
                    "reasoning_gym tasks are graded by the reasoning_gym grader, and it grades only them"
                )
        return self

    @model_validator(mode="after")
    def _the_method_can_run(self) -> PipelineConfig:
        if problems := self.method.problems(self):
            raise ValueError("; ".join(problems))
        return self

    @property
    def run_dir(self) -> Path:
        return self.run.output_dir / self.run.name


def _holds(data: Any, path: list[str]) -> bool:
    """Whether the plain data ``data`` holds the dotted key ``path``."""
    for part in path:
        if not isinstance(data, dict) or part not in data:
            return False
        data = data[part]
    return True


def eval_history_window(config: PipelineConfig) -> int | None:
    """The attempts an eval turn sees: ``evaluation.history_window``, else the rollout's window (None: all)."""
    return config.evaluation.history_window or config.rollout.history_window


def eval_budget_problem(config: PipelineConfig, turns: int) -> str | None:
    """Why an eval of ``turns`` turns cannot fit the context (``eval --turns`` asks for other turns than the config's);
    None when it can."""
    attempts = attempts_shown(turns, eval_history_window(config))
    return _budget_problem("evaluation", config.evaluation.sampling, attempts, config)


def _budget_problem(section: str, sampling: SamplingSection, attempts: int, config: PipelineConfig) -> str | None:
    """Why ``section``'s requests cannot fit ``model.max_model_len`` with ``attempts`` earlier attempts of up to
    ``sampling.max_tokens`` tokens in their prompt, leaving the task's prompt at least a token; None when they can."""
    limit, max_tokens = config.model.max_model_len, sampling.max_tokens
    if max_tokens >= limit:
        return (
            f"{section}.sampling.max_tokens ({max_tokens}) must be below model.max_model_len ({limit}): "
            "the rest is the prompt's budget"
        )
    needed = (attempts + 1) * max_tokens
    if needed >= limit:
        return (
            f"{section}.sampling.max_tokens ({max_tokens}) x {attempts + 1} (the answer and the {attempts} "
            f"earlier attempt(s) the prompt of a {section} turn shows) = {needed} must be below "
            f"model.max_model_len ({limit}), leaving room for the task: lower max_tokens or {section}.turns, "
            f"raise model.max_model_len, or set {section}.history_window"
        )
    return None


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
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE with a dotted key, e.g. run.iterations=3")
        node = data
        parts = key.strip().split(".")
        for depth, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {item!r}: {'.'.join(parts[: depth + 1])} is not a section")
            node = child
        try:
            node[parts[-1]] = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {item!r}: the value {unreadable_yaml(exc)}") from None
    return data


def parse_config(data: dict[str, Any], source: str = "config") -> PipelineConfig:
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, source)) from None


def load_config(path: str | Path, overrides: list[str] | None = None) -> PipelineConfig:
    """Read, override and validate a YAML run config."""
    return parse_config(apply_overrides(read_config_file(path), overrides or []), source=str(path))


def read_config_file(path: str | Path) -> dict[str, Any]:
    """A YAML config file as plain data, unvalidated: for whoever compares configs or must not check task files."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError, OSError) as exc:
        raise ConfigError(f"{path}: {unreadable_yaml(exc)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return data


def check_tasks(config: PipelineConfig) -> dict[str, int]:
    """Read every task of both splits, as the stages will, so a bad row fails before a run or server exists.

    The config's validation only builds the task sources; their rows are
    read here. Returns the number of tasks per split.
    """
    splits = (("train", config.tasks.train), ("eval", config.tasks.eval))
    return {split: len(load_split(section, split)) for split, section in splits}


def load_split(section: TaskSourceSection, split: str) -> list[Task]:
    """One split's tasks; a bad row or an empty split is a :class:`ConfigError` naming the section, not a traceback."""
    from pipeline.tasks import load_tasks

    try:
        tasks = load_tasks(section, split)
    except (ValueError, OSError) as exc:
        raise ConfigError(f"tasks.{split} ({section.source}): {exc}") from None
    if not tasks:
        raise ConfigError(f"tasks.{split} ({section.source}): the {split} split has no tasks")
    return tasks


def dump_config(config: PipelineConfig) -> str:
    """The resolved config as YAML, every key with its value: it reads back as the same config."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


def config_data(config: PipelineConfig) -> dict[str, Any]:
    """The resolved config as the plain data its YAML (:func:`dump_config`) reads back as."""
    return yaml.safe_load(dump_config(config))


_ABSENT = object()


def config_changes(old: Any, new: Any, prefix: str = "") -> dict[str, str]:
    """Each dotted key whose value differs between two configs' data, as ``{"run.iterations": "2 -> 3"}``.

    Lists count as one value; a key that one side lacks shows as ``(absent)``.
    """
    if isinstance(old, dict) and isinstance(new, dict):
        changes: dict[str, str] = {}
        for key in dict.fromkeys([*old, *new]):
            changes |= config_changes(old.get(key, _ABSENT), new.get(key, _ABSENT), f"{prefix}{key}.")
        return changes
    return {} if old == new else {prefix.removesuffix("."): f"{_shown(old)} -> {_shown(new)}"}


def format_changes(changes: dict[str, str]) -> str:
    """``run.iterations: 2 -> 3; method.turns: 3 -> 2``: config changes on one line."""
    return "; ".join(f"{key}: {change}" for key, change in changes.items())


def _shown(value: Any) -> str:
    return "(absent)" if value is _ABSENT else json.dumps(value, ensure_ascii=False, default=str)


def _format_errors(exc: ValidationError, source: str) -> str:
    """Every problem on one line: ``source: key: message (see its reference entry)``, several joined by `` | ``
    after their count."""
    problems = []
    for error in exc.errors():
        loc = [str(part) for part in error["loc"]]
        if loc[:1] == ["method"] and loc[1:2] and loc[1] in METHODS:
            del loc[1]  # the union tag pydantic inserts for the discriminated section
        message = " ".join(error["msg"].removeprefix("Value error, ").split())
        # A check of the whole config names its keys in its message.
        problems.append(f"{'.'.join(loc)}: {message} (see {key_link(PipelineConfig, loc)})" if loc else message)
    count = "" if len(problems) == 1 else f"{len(problems)} invalid setting(s): "
    return f"{source}: {count}{' | '.join(problems)}"
