"""The run manifest: which stage of which iteration is pending, running, done or failed.

The manifest is the single source of truth for resume: a stage is done only
once its outputs are on disk (written atomically) *and* the manifest says so
with their digests. It is rewritten atomically on every change, so a crash
mid-write leaves the previous version readable.

The digests are checked, not just kept: :meth:`Manifest.verified_done` asks
that a done stage's outputs still match them, so no stage consumes a torn, edited
or deleted output; :meth:`Manifest.damage` says what is wrong for ``status``
and for ``resume``, which redoes damaged stages (:func:`pipeline.runner.loop.redo_damaged`).

It also holds the config the run started with (``config``, the data of
``config.yaml``), so that an edit of ``config.yaml`` is noticed rather than
silently changing what the run's stages, report and exports mean, and the
changes ``selfimprove resume --set`` made to it since (``overrides``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from enum import Enum
from pathlib import Path, PurePosixPath
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, with_config

from pipeline.config.methods import method_section
from pipeline.run.files import MANIFEST_NAME
from pipeline.system.atomic import CorruptFileError, file_digest, read_json, write_json_atomic


class DamagedOutputError(RuntimeError):
    """A done stage's output is missing or no longer matches the digest the manifest recorded for it."""


class StageState(str, Enum):
    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


@with_config(ConfigDict(extra="forbid"))
@dataclass
class StageRecord:
    state: StageState = StageState.PENDING
    started_at: str | None = None
    finished_at: str | None = None
    outputs: dict[str, str] = field(default_factory=dict)
    error: str | None = None
    attempts: int = 0

    def to_dict(self) -> dict:
        data = asdict(self)
        data["state"] = self.state.value
        return data


class _ManifestFile(BaseModel):
    """What ``manifest.json`` must hold; anything else (a hand edit, another program's file) is refused on load."""

    run: str
    stages: dict[str, StageRecord]
    config: dict[str, Any] | None = None  # None: a run from before the config was recorded (layout.fixed_config_data)
    overrides: list[dict[str, Any]] = []


def stage_key(iteration: int, stage: str) -> str:
    return f"iter_{iteration}/{stage}"


def parse_stage_key(key: str) -> tuple[int, str]:
    """``iter_2/train`` -> ``(2, "train")``; anything else is a ValueError naming it."""
    iteration, _, stage = key.partition("/")
    number = iteration.removeprefix("iter_")
    if not (iteration.startswith("iter_") and number.isdigit() and stage and "/" not in stage):
        raise ValueError(f"{key!r} is not a stage (iter_K/<stage>)")
    return int(number), stage


def _check_output_name(name: str) -> None:
    """Refuse a recorded output that is not a path inside the run directory (absolute, or climbing out with ``..``)."""
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or not path.parts:
        raise ValueError(f"output {name!r} is not a path inside the run directory")


def _each_file(outputs: Iterable[Path]) -> Iterator[Path]:
    """The output files, a directory standing for every file inside it (in sorted order)."""
    for output in map(Path, outputs):
        if output.is_dir():
            yield from sorted(path for path in output.rglob("*") if path.is_file())
        else:
            yield output


def planned_stages(iterations: int, method: str = "rise") -> list[tuple[int, str]]:
    """The order a run goes through: the base model's eval, then each iteration's stages (the method declares them)."""
    plan = [(0, "eval")]
    for iteration in range(1, iterations + 1):
        plan.extend((iteration, stage) for stage in method_section(method).ITERATION_STAGES)
    return plan


class Manifest:
    """Stage records of one run, persisted as ``manifest.json`` in the run directory."""

    def __init__(
        self,
        run_dir: Path,
        run_name: str,
        stages: dict[str, StageRecord] | None = None,
        config: dict[str, Any] | None = None,
        overrides: list[dict[str, Any]] | None = None,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.run_name = run_name
        self.stages: dict[str, StageRecord] = stages or {}
        self.config = config  # None: an older run's manifest (layout.fixed_config_data)
        self.overrides: list[dict[str, Any]] = overrides or []
        self._intact: dict[str, tuple[str, tuple[int, int, int]]] = {}  # output -> (digest, stat) that matched

    @property
    def path(self) -> Path:
        return self.run_dir / MANIFEST_NAME

    @classmethod
    def create(
        cls, run_dir: Path, run_name: str, iterations: int, method: str = "rise", config: dict[str, Any] | None = None
    ) -> Manifest:
        plan = planned_stages(iterations, method)
        manifest = cls(run_dir, run_name, {stage_key(i, s): StageRecord() for i, s in plan}, config)
        manifest.save()
        return manifest

    @classmethod
    def load(cls, run_dir: Path) -> Manifest:
        path = Path(run_dir) / MANIFEST_NAME
        if not path.is_file():
            raise FileNotFoundError(f"no run manifest at {path}: is {run_dir} a run directory?")
        try:
            data = _ManifestFile.model_validate(read_json(path))
        except ValidationError as exc:
            error = exc.errors()[0]
            where = ".".join(map(str, error["loc"])) or "the top level"
            raise CorruptFileError(f"{path}: not a run manifest ({where}: {error['msg']})") from None
        try:
            for key, record in data.stages.items():
                parse_stage_key(key)
                for name in record.outputs:
                    _check_output_name(name)
        except ValueError as exc:
            raise CorruptFileError(f"{path}: not a run manifest ({exc})") from None
        return cls(Path(run_dir), data.run, data.stages, data.config, data.overrides)

    def save(self) -> None:
        data: dict[str, Any] = {"run": self.run_name, "updated_at": _now()}
        if self.config is not None:
            data |= {"config": self.config, "overrides": self.overrides}
        write_json_atomic(self.path, data | {"stages": {k: v.to_dict() for k, v in self.stages.items()}})

    def amend_config(
        self, config: dict[str, Any], overrides: list[str], changes: dict[str, str], plan: list[tuple[int, str]]
    ) -> None:
        """Record a deliberate change of the run's config (``--set`` overrides) and the plan it gives; saves.

        Stages of the new plan that the old one lacked start pending; the
        caller has made sure that no stage the new plan drops is done.
        """
        self.config = config
        self.overrides.append({"at": _now(), "set": overrides, "changes": changes})
        self.stages = {stage_key(i, s): self.stages.get(stage_key(i, s)) or StageRecord() for i, s in plan}
        self.save()

    def record(self, iteration: int, stage: str) -> StageRecord:
        """The stage's record; a stage the manifest does not hold reads as a fresh pending one.

        Reading never adds an entry, so asking about a stage (say iteration
        0's train, when the base model serves iteration 1) cannot put a stage
        outside the run's plan into the saved manifest.
        """
        return self.stages.get(stage_key(iteration, stage)) or StageRecord()

    def _entry(self, iteration: int, stage: str) -> StageRecord:
        """The stage's record, added if missing: for the methods that change it."""
        return self.stages.setdefault(stage_key(iteration, stage), StageRecord())

    def is_done(self, iteration: int, stage: str) -> bool:
        """Whether the manifest records the stage as done; its outputs unchecked (see :meth:`verified_done`)."""
        return self.record(iteration, stage).state is StageState.DONE

    def verified_done(self, iteration: int, stage: str, files: Iterable[Path] | None = None) -> bool:
        """Whether the stage is done with its outputs intact; a done stage whose outputs were damaged raises.

        What a stage consumes, or returns as already done, goes through here:
        raising rather than answering False keeps a damaged file from being
        used, and a stage that later stages were built on from being redone
        on its own. ``files`` checks only those of its outputs: for a reader
        of one small file beside big ones (a train summary beside the weights).
        """
        if not self.is_done(iteration, stage):
            return False
        self.check_intact(iteration, stage, files)
        return True

    def check_intact(self, iteration: int, stage: str, files: Iterable[Path] | None = None) -> None:
        """Raise :class:`DamagedOutputError`, naming the files, when a done stage's outputs (or ``files``) changed."""
        if problems := self.damage(iteration, stage, files):
            raise DamagedOutputError(
                f"{'; '.join(problems)}: iter_{iteration}/{stage} is damaged; "
                f"`selfimprove resume {self.run_dir}` redoes it and the stages built on it"
            )

    def damage(self, iteration: int, stage: str, files: Iterable[Path] | None = None) -> list[str]:
        """What is wrong with a done stage's outputs (or those of them in ``files``): each missing or changed
        file, by path; [] when intact.

        A file is hashed again only when its size or modification time
        changed since it last matched, so repeated checks stay cheap.
        """
        record = self.record(iteration, stage)
        if record.state is not StageState.DONE:
            return []
        wanted = None if files is None else {str(Path(f).relative_to(self.run_dir)) for f in files}
        problems = []
        for name, digest in record.outputs.items():
            if wanted is not None and name not in wanted:
                continue
            path = self.run_dir / name
            if not path.is_file():
                problems.append(f"{path} is missing")
                continue
            stat = path.stat()
            signature = (stat.st_size, stat.st_mtime_ns, stat.st_ino)
            if self._intact.get(name) == (digest, signature):
                continue
            if file_digest(path) != digest:
                problems.append(f"{path} does not match the digest the manifest recorded")
            else:
                self._intact[name] = (digest, signature)
        return problems

    def reset(self, iteration: int, stage: str, reason: str) -> None:
        """Make a stage pending again, saying why (in ``error``); the caller saves."""
        record = self._entry(iteration, stage)
        record.state, record.outputs, record.finished_at, record.error = StageState.PENDING, {}, None, reason

    def start(self, iteration: int, stage: str) -> None:
        record = self._entry(iteration, stage)
        record.state = StageState.RUNNING
        record.started_at = _now()
        record.finished_at = None
        record.error = None
        record.attempts += 1
        self.save()

    def complete(self, iteration: int, stage: str, outputs: Iterable[Path]) -> None:
        """Mark a stage done, recording a digest of each output file (relative to the run dir).

        An output that is a directory (a saved model, with its tokenizer and
        chat template) is recorded as every file inside it, at any depth, so
        no file the stage publishes escapes the check.
        """
        record = self._entry(iteration, stage)
        record.outputs = {str(p.relative_to(self.run_dir)): file_digest(p) for p in _each_file(outputs)}
        record.state = StageState.DONE
        record.finished_at = _now()
        self.save()

    def fail(self, iteration: int, stage: str, error: str) -> None:
        record = self._entry(iteration, stage)
        record.state = StageState.FAILED
        record.finished_at = _now()
        record.error = error
        self.save()

    def unfinished(self) -> list[tuple[int, str]]:
        """``(iteration, stage)`` of every stage not done, in plan order."""
        return [parse_stage_key(key) for key, record in self.stages.items() if record.state is not StageState.DONE]

    def first_unfinished(self) -> tuple[int, str] | None:
        pending = self.unfinished()
        return pending[0] if pending else None


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
