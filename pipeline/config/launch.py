"""What ``accelerate launch`` will run, read once from the accelerate YAML and the ``training`` section.

The config's checks, the train stage's launcher and the methods' own checks
all ask the same questions of the launch (how many processes, sharded
weights?); they read the answers here.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator


class LaunchKeys(Protocol):
    """The ``training`` section's keys that override the accelerate YAML (a protocol, so that the launch settings,
    which the config's checks read, do not import the config's module)."""

    @property
    def accelerate_config(self) -> Path | None: ...
    @property
    def num_processes(self) -> int | None: ...
    @property
    def num_machines(self) -> int | None: ...
    @property
    def main_process_ip(self) -> str | None: ...
    @property
    def main_process_port(self) -> int | None: ...


class _FileSection(BaseModel):
    """Keys of the accelerate YAML the pipeline reads, with the types accelerate's loader gives them.

    Strict: YAML already gives every value its type, so a string where a
    number belongs (``num_processes: "8"``), or YAML's ``NO`` (false)
    where accelerate's name ``'NO'`` belongs, is a mistake and not coerced.
    Other keys are accelerate's own, which ``accelerate launch`` checks.
    """

    model_config = ConfigDict(extra="allow", strict=True, frozen=True)


class FsdpConfig(_FileSection):
    fsdp_version: int | None = None
    fsdp_state_dict_type: str | None = None


class DeepSpeedConfig(_FileSection):
    zero_stage: int | None = Field(None, ge=0, le=3)
    deepspeed_multinode_launcher: str | None = None


class MpirunConfig(_FileSection):
    mpirun_hostfile: str | None = None


class AccelerateFile(_FileSection):
    """An accelerate YAML, as far as the launch settings read it."""

    distributed_type: str
    num_processes: int | None = Field(None, ge=1)
    num_machines: int | None = Field(None, ge=1)
    main_process_ip: str | None = None
    main_process_port: int | None = Field(None, ge=1, le=65535)
    use_cpu: bool = False
    mpirun_config: MpirunConfig | None = None
    fsdp_config: FsdpConfig | None = None
    deepspeed_config: DeepSpeedConfig | None = None

    @field_validator("distributed_type", mode="before")
    @classmethod
    def _quoted_no(cls, value: object) -> object:
        if value is False:
            raise ValueError("is false: YAML reads a bare NO as false, write 'NO'")
        return value


@dataclass(frozen=True)
class LaunchSettings:
    """What ``accelerate launch`` will run: the accelerate YAML's values, overridden by the ``training`` section's.

    Read with plain YAML (not accelerate's classes, which import torch and the
    hub) so that loading a run config stays light.
    """

    distributed_type: str
    num_processes: int
    num_machines: int
    main_process_ip: str | None
    main_process_port: int | None
    use_cpu: bool
    mpirun: bool
    fsdp_version: int | None
    fsdp_state_dict_type: str | None
    zero_stage: int | None
    deepspeed_multinode_launcher: str | None

    @classmethod
    def of(cls, settings: LaunchKeys) -> LaunchSettings:
        file = read_accelerate_config(settings.accelerate_config) if settings.accelerate_config else None
        num_processes = settings.num_processes or (file.num_processes if file else None) or 1
        if file is None:
            # Without a file the stage launches one plain process, or several under torchrun (--multi_gpu).
            file = AccelerateFile(distributed_type="MULTI_GPU" if num_processes > 1 else "NO")
        fsdp, deepspeed = file.fsdp_config or FsdpConfig(), file.deepspeed_config or DeepSpeedConfig()
        return cls(
            distributed_type=file.distributed_type,
            num_processes=num_processes,
            num_machines=settings.num_machines or file.num_machines or 1,
            main_process_ip=settings.main_process_ip or file.main_process_ip,
            main_process_port=settings.main_process_port or file.main_process_port,
            use_cpu=file.use_cpu,
            mpirun=bool(file.mpirun_config and file.mpirun_config.mpirun_hostfile),
            fsdp_version=fsdp.fsdp_version,
            fsdp_state_dict_type=fsdp.fsdp_state_dict_type,
            zero_stage=deepspeed.zero_stage,
            deepspeed_multinode_launcher=deepspeed.deepspeed_multinode_launcher,
        )

    @property
    def processes_per_machine(self) -> int:
        """torchrun starts num_processes / num_machines on each machine (the validation asks that it divides)."""
        return max(1, self.num_processes // self.num_machines)

    @property
    def shards_parameters(self) -> bool:
        """FSDP, or DeepSpeed ZeRO-3: each process holds only a shard of the weights."""
        return self.distributed_type == "FSDP" or (self.distributed_type == "DEEPSPEED" and self.zero_stage == 3)

    def problems(self) -> list[str]:
        """What would go wrong at launch: each problem names the key to change."""
        problems = []
        if self.num_processes % self.num_machines:
            problems.append(
                f"training.num_processes ({self.num_processes}) must be a multiple of "
                f"training.num_machines ({self.num_machines}): every machine runs as many processes"
            )
        if self.num_machines > 1 and not self.main_process_ip:
            problems.append(
                "training.num_machines > 1 needs training.main_process_ip (or main_process_ip in the "
                "accelerate config): the address of machine rank 0"
            )
        if self.num_processes > 1 and (
            self.distributed_type == "NO" or (self.distributed_type == "MULTI_CPU" and not self.mpirun)
        ):
            # accelerate's plain launcher starts a single process for these, whatever --num_processes says.
            problems.append(
                f"training.num_processes {self.num_processes} needs an accelerate config whose "
                f"distributed_type is MULTI_GPU, FSDP or DEEPSPEED (with use_cpu: true for CPU "
                f"processes, as in configs/accelerate/cpu_2proc.yaml), or no accelerate_config: "
                f"distributed_type {self.distributed_type} runs one process"
            )
        if self.distributed_type == "FSDP" and self.fsdp_version != 2:
            problems.append("training.accelerate_config: FSDP configs must set fsdp_config.fsdp_version: 2 (FSDP2)")
        if self.distributed_type == "FSDP" and self.fsdp_state_dict_type != "FULL_STATE_DICT":
            problems.append(
                "training.accelerate_config: FSDP configs must set fsdp_config.fsdp_state_dict_type: "
                "FULL_STATE_DICT (the trained adapter or model is served as one checkpoint)"
            )
        if (
            self.distributed_type == "DEEPSPEED"
            and self.num_machines > 1
            and self.deepspeed_multinode_launcher != "standard"
        ):
            problems.append(
                "training.accelerate_config: DeepSpeed on several machines needs "
                "deepspeed_config.deepspeed_multinode_launcher: standard (each machine launches its own)"
            )
        return problems


def read_accelerate_config(path: Path) -> AccelerateFile:
    """An accelerate YAML's launch keys, typed; fails on one line naming ``training.accelerate_config``.

    Parsed once per version of the file (its path and modification time):
    the config checks, the launcher and the join command all ask for the
    launch settings, and they all see the same parse.
    """
    try:
        modified = Path(path).stat().st_mtime_ns
    except OSError as exc:
        raise ValueError(f"training.accelerate_config {path}: {unreadable_yaml(exc)}") from None
    return _parsed_accelerate_config(str(path), modified)


@functools.lru_cache(maxsize=8)
def _parsed_accelerate_config(path: str, modified_ns: int) -> AccelerateFile:
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError, OSError) as exc:
        raise ValueError(f"training.accelerate_config {path}: {unreadable_yaml(exc)}") from None
    if not isinstance(data, dict) or "distributed_type" not in data:
        raise ValueError(f"training.accelerate_config {path}: expected an accelerate config with a distributed_type")
    try:
        return AccelerateFile.model_validate(data)
    except ValidationError as exc:
        problems = [
            f"{'.'.join(map(str, error['loc']))}: {error['msg'].removeprefix('Value error, ')} (got {error['input']!r})"
            for error in exc.errors()
        ]
        raise ValueError(f"training.accelerate_config {path}: {'; '.join(problems)}") from None


def unreadable_yaml(exc: Exception) -> str:
    """Why a YAML text could not be read, on one line: the parser's problem and where, or the decoding error."""
    if isinstance(exc, UnicodeDecodeError):
        return f"is not UTF-8 text (byte offset {exc.start})"
    if isinstance(exc, OSError):
        return f"cannot be read ({exc.strerror})"
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or " ".join(str(exc).split())
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"is not valid YAML: {problem}{where}"
