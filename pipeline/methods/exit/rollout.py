"""ExIt's generation inside GRPO: TRL's ``rollout_func``, served by the project's vLLM service.

GRPOTrainer hands the rollout function the prompts of one generation batch:
``num_generations`` consecutive copies of each training task's prompt
(:class:`ExitRollout` gathers them from every training process). For each
such group the main process's :class:`ExitGenerator`

1. asks the buffer what to continue (:meth:`~pipeline.methods.exit.buffer.LearnabilityBuffer.next_instance`):
   the fresh task, or with probability p a prefix of a buffered history,
   followed by the improvement prompt (or, with probability p_div, the
   divergence prompt);
2. draws the G completions in one request to the vLLM server, under the
   adapter last synced from the trainer (every ``sync_every`` steps the
   trainer's adapter is saved and loaded into the server under a new name);
3. grades them with the configured grader in the grading pool and turns the
   scores into rewards (:func:`improvement_reward`);
4. records the group in the buffer (the child inherits the group's
   learnability) and in ``groups.jsonl``.

Every prompt fits the model: the history is cut to ``rollout.history_window``
attempts and then, oldest first, to a token budget of ``model.max_model_len``
minus ``rollout.sampling.max_tokens``, counted with the tokenizer's chat
template (:class:`PromptFitter`); nothing is sent that the server must refuse.

The buffer is saved atomically after every batch. The token ids returned are
exactly those the server saw and produced, so GRPO's loss is computed on
what was sampled. A request that fails after its retries leaves its group
unscorable (reward None: TRL gives it zero advantage) and is counted
(:class:`FailureCount`); once the failed share of the stage's groups passes
``method.max_failed_fraction`` the stage stops with the first error's text,
instead of training on empty groups.
"""

from __future__ import annotations

import asyncio
import math
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from accelerate.utils import broadcast_object_list, gather_object
from anyio.from_thread import BlockingPortal, start_blocking_portal

from pipeline.config.settings import PipelineConfig, TemplatesSection
from pipeline.engine.generation import Completion, GenerationError, Message
from pipeline.engine.service_client import Endpoint, ServiceClient
from pipeline.methods.exit.buffer import Instance, LearnabilityBuffer, Step
from pipeline.methods.exit.diversity import DiversityScorer
from pipeline.methods.exit.layout import buffer_path, groups_path, read_servers, sync_dir
from pipeline.rollouts.protocol import Attempt, build_messages
from pipeline.rollouts.service import grading_pool, pooled_grading, sampling_params
from pipeline.rollouts.trajectory import GradeFn, chat_and_grade, request_seed
from pipeline.run.layout import RunDir
from pipeline.system.atomic import append_jsonl_durably, read_jsonl, write_jsonl_atomic
from pipeline.tasks import Task, load_tasks
from rewards import GradeResult, get_grader

REWARD = "exit_reward"
ADVANTAGE_SCALE = "advantage_scale"


def improvement_reward(score: float, previous: float | None, binary: bool, delta_max: float) -> float:
    """The reward of one attempt, in [0, 1].

    A fresh answer, or any answer under a binary verifier, earns its score;
    an improvement step under a graded verifier earns max(0, delta / delta_max)
    for its gain over the attempt it improves (capped at 1).
    """
    if previous is None or binary:
        return score
    return min(1.0, max(0.0, (score - previous) / delta_max))


def instance_messages(
    task: Task, instance: Instance, templates: TemplatesSection, history_window: int | None
) -> list[Message]:
    """The conversation of one improvement step: the task, the history, then "improve" (or "diverge")."""
    attempts = [Attempt(step.response, templates.improve) for step in instance.history]
    if instance.diverge and attempts:
        attempts[-1] = Attempt(attempts[-1].response, templates.diverge)
    return build_messages(task.prompt, attempts, templates, history_window)


class PromptTooLong(ValueError):
    """A task whose prompt cannot fit the model even with the shortest history."""


class PromptFitter:
    """Cuts an improvement step's history until its prompt fits the model.

    The budget is ``model.max_model_len - rollout.sampling.max_tokens``: vLLM
    refuses a prompt longer than the model (HTTP 400) and silently shortens
    the completions of one that leaves less than ``max_tokens``, so within
    the budget every request succeeds and every completion may run its full
    length. ``count`` gives the prompt tokens of a conversation as the
    server will see it (the tokenizer's chat template with the generation
    prompt). The history is first cut to ``history_window`` attempts, then
    the oldest attempts are dropped one by one; an improvement step always
    keeps the attempt it improves, so one that does not fit even then, or a
    task prompt that alone does not fit, is a :class:`PromptTooLong` naming
    the task.
    """

    def __init__(
        self,
        templates: TemplatesSection,
        history_window: int | None,
        budget: int,
        count: Callable[[list[Message]], int],
    ) -> None:
        self.templates = templates
        self.history_window = history_window
        self.budget = budget
        self.count = count

    def messages(self, task: Task, instance: Instance) -> tuple[list[Message], int]:
        """The conversation to send and the number of attempts it shows."""
        shown = min(instance.depth, self.history_window or instance.depth)
        while True:
            messages = instance_messages(task, instance, self.templates, shown)
            tokens = self.count(messages)
            if tokens <= self.budget:
                return messages, shown
            if shown <= 1:
                raise PromptTooLong(self._too_long(task, instance, tokens))
            shown -= 1

    def check_task(self, task: Task) -> None:
        """Fail before training when a task's prompt alone does not fit."""
        self.messages(task, Instance(task.task_id))

    def _too_long(self, task: Task, instance: Instance, tokens: int) -> str:
        what = "its prompt alone" if instance.depth == 0 else "its prompt with the attempt being improved"
        return (
            f"task {task.task_id}: {what} takes {tokens} tokens, over the budget of {self.budget} "
            "(model.max_model_len - rollout.sampling.max_tokens): raise model.max_model_len or lower "
            "rollout.sampling.max_tokens"
        )


def chat_template_counter(tokenizer: Any) -> Callable[[list[Message]], int]:
    """Prompt tokens of a conversation, counted as the server counts them: the chat template with the
    generation prompt."""

    def count(messages: list[Message]) -> int:
        return len(
            tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
        )

    return count


class StageFailed(RuntimeError):
    """Too many GRPO groups of a stage failed: training on them would train on nothing."""


@dataclass
class FailureCount:
    """The stage's groups so far and those whose request failed, with the first failure's text.

    The stage stops once the failed share passes ``max_fraction``, judged
    from ``ceil(1 / max_fraction)`` groups on: the count at which one failure
    alone is within the allowed share, so a single early failure never stops
    a run (0 stops at the first failure; 1 never stops).
    """

    max_fraction: float
    groups: int = 0
    failed: int = 0
    first_error: str | None = None

    @classmethod
    def from_records(cls, max_fraction: float, records: list[dict[str, Any]]) -> FailureCount:
        """The count of a group log's lines (those a resumed stage keeps)."""
        count = cls(max_fraction)
        for record in records:
            count.add(record["error"])
        return count

    def add(self, error: str | None) -> None:
        self.groups += 1
        if error is not None:
            self.failed += 1
            self.first_error = self.first_error or error

    def check(self) -> None:
        """Raise :class:`StageFailed` when the failed share is past the limit."""
        judged_from = 1 if self.max_fraction == 0 else math.ceil(1 / self.max_fraction)
        if self.groups >= judged_from and self.failed > self.max_fraction * self.groups:
            raise StageFailed(
                f"{self.failed} of {self.groups} GRPO groups failed, more than "
                f"method.max_failed_fraction ({self.max_fraction}); the first: {self.first_error}"
            )


def prompt_index(tasks: list[Task]) -> dict[str, Task]:
    """Task by prompt text: GRPOTrainer hands back the dataset's prompts, not its other columns.

    Tasks that share a prompt must share the reference, or the prompt
    cannot say which task it is.
    """
    index: dict[str, Task] = {}
    for task in tasks:
        known = index.setdefault(task.prompt, task)
        if known.reference != task.reference:
            raise ValueError(f"tasks {known.task_id} and {task.task_id} share a prompt but not the reference")
    return index


class GroupLog:
    """``groups.jsonl``: one line per GRPO group, appended durably.

    Opened with ``through_step``, it first drops the lines of steps after
    that one: the steps a resumed training will run again.
    """

    def __init__(self, path: Path, through_step: int) -> None:
        self.path = path
        kept = [r for r in read_jsonl(path) if r["step"] <= through_step] if path.exists() else []
        write_jsonl_atomic(path, kept)
        self.kept = kept  # the lines of the steps before the resumed one
        self._handle = open(path, "a", encoding="utf-8")

    def append(self, records: list[dict[str, Any]]) -> None:
        append_jsonl_durably(self._handle, records)

    def close(self) -> None:
        self._handle.close()


@dataclass
class GroupResult:
    """One group's generation: the completions (None when the request failed) and their grades."""

    instance: Instance
    task: Task
    shown: int  # attempts of the history the prompt showed
    completions: list[Completion] | None
    grades: list[GradeResult]
    error: str | None = None


@dataclass
class TrainingPrompts:
    """The training tasks by prompt text (:func:`prompt_index`) and the fitter that cuts their improvement
    steps' prompts to the model."""

    by_prompt: dict[str, Task]
    fitter: PromptFitter


@dataclass
class GroupRecords:
    """What each batch updates and saves: the buffer (saved whole to ``buffer_path``) and the group log."""

    buffer: LearnabilityBuffer
    buffer_path: Path
    log: GroupLog


@dataclass
class PolicyServers:
    """The rollout servers the policy samples from, and how the trainer's adapter is synced into them.

    ``portal`` is the event loop thread the synchronous trainer awaits the
    async ``client`` on; each synced adapter is saved under ``sync_dir`` and
    named after ``adapter_prefix``.
    """

    client: ServiceClient
    portal: BlockingPortal
    sync_dir: Path
    adapter_prefix: str


@dataclass
class Scoring:
    """How a group's completions are scored: the grading function, whether the grader is binary (the
    rewards of :func:`improvement_reward`), and the diversity bonus's scorer (None without the bonus)."""

    grade: GradeFn
    binary: bool
    diversity: DiversityScorer | None = None


class ExitGenerator:
    """Generates, grades and records the GRPO groups of a whole generation batch (the main process's job).

    It reads the ``method`` section, ``rollout.sampling`` and ``run.seed`` of
    ``config``; ``eos_token_id`` fills the token ids of a failed group.
    """

    def __init__(
        self,
        config: PipelineConfig,
        prompts: TrainingPrompts,
        records: GroupRecords,
        servers: PolicyServers,
        scoring: Scoring,
        eos_token_id: int,
    ) -> None:
        self.config = config
        self.method = config.method
        self.prompts = prompts
        self._by_id = {task.task_id: task for task in prompts.by_prompt.values()}
        self.records = records
        self.servers = servers
        self.scoring = scoring
        self.eos_token_id = eos_token_id
        self.failures = FailureCount.from_records(self.method.max_failed_fraction, records.log.kept)
        self.adapter: str | None = None
        self._synced: tuple[int, Path] | None = None  # step and directory of the adapter the servers hold

    def __call__(self, prompts: list[Any], trainer: Any) -> dict[str, list[Any] | None]:
        """The batch TRL expects for ``prompts``: ``num_generations`` consecutive copies of each group's prompt."""
        started = time.monotonic()
        step = trainer.state.global_step + 1  # the optimizer step these completions will train
        self.sync_adapter(trainer)
        size = trainer.num_generations
        instances = [self._next_instance(prompts[i]) for i in range(0, len(prompts), size)]
        results = self.servers.portal.call(self._generate, instances, size, step)
        batch = self._record(results, size, step)
        self.failures.check()
        stats = self.records.buffer.stats()
        print(
            f"exit step {step}: {len(instances)} groups (depths {[i.depth for i in instances]}), "
            f"rollout {time.monotonic() - started:.1f} s, buffer {stats['size']}/{stats['capacity']} "
            f"depths {stats['depth_histogram']}",
            flush=True,
        )
        return batch

    def sync_adapter(self, trainer: Any) -> None:
        """Save the trainer's adapter and load it into the servers, every ``sync_every`` steps.

        The previous synced adapter is unloaded and its files removed, so the
        servers hold one training adapter at a time.
        """
        step = trainer.state.global_step
        if self._synced is not None and step - self._synced[0] < self.method.sync_every:
            return
        servers = self.servers
        name, path = f"{servers.adapter_prefix}-step{step}", servers.sync_dir / f"step-{step}"
        shutil.rmtree(path, ignore_errors=True)
        trainer.accelerator.unwrap_model(trainer.model).save_pretrained(str(path))
        servers.portal.call(servers.client.load_adapter, name, str(path))
        old_name, old_sync = self.adapter, self._synced
        self.adapter, self._synced = name, (step, path)
        if old_name is not None and old_sync is not None:
            servers.portal.call(servers.client.unload_adapter, old_name)
            shutil.rmtree(old_sync[1], ignore_errors=True)

    def _next_instance(self, prompt: Any) -> Instance:
        text = prompt if isinstance(prompt, str) else prompt[-1]["content"]
        task = self.prompts.by_prompt.get(text)
        if task is None:
            raise ValueError(f"GRPO prompt is not one of the training tasks: {text[:80]!r}")
        return self.records.buffer.next_instance(
            task.task_id, self.method.select_prob, self.method.min_buffer, self.method.divergence_prob
        )

    async def _generate(self, instances: list[Instance], size: int, step: int) -> list[GroupResult]:
        groups = (self._group(self._by_id[inst.task_id], inst, size, step, i) for i, inst in enumerate(instances))
        return list(await asyncio.gather(*groups))

    async def _group(self, task: Task, instance: Instance, size: int, step: int, index: int) -> GroupResult:
        messages, shown = self.prompts.fitter.messages(task, instance)
        seed = request_seed(self.config.run.seed, task.task_id, step, index)
        try:
            completions, grades = await chat_and_grade(
                self.servers.client,
                messages,
                self.scoring.grade,
                task.reference,
                n=size,
                params=sampling_params(self.config.rollout.sampling),
                seed=seed,
                adapter=self.adapter,
            )
        except GenerationError as exc:
            return GroupResult(instance, task, shown, None, [], f"{type(exc).__name__}: {exc}")
        if not all(c.prompt_token_ids for c in completions):
            raise GenerationError("the rollout server returned no prompt_token_ids; it must support return_token_ids")
        return GroupResult(instance, task, shown, completions, grades)

    def _record(self, results: list[GroupResult], size: int, step: int) -> dict[str, list[Any] | None]:
        """Update the buffer and the group log, in group order; return the batch TRL expects."""
        out: dict[str, list[Any]] = {"prompt_ids": [], "completion_ids": [], REWARD: [], ADVANTAGE_SCALE: []}
        records = []
        for index, result in enumerate(results):
            records.append(self._record_group(result, step, index))
            self.failures.add(result.error)
            if result.completions is None:
                out["prompt_ids"] += [[self.eos_token_id]] * size
                out["completion_ids"] += [[self.eos_token_id]] * size
                out[REWARD] += [None] * size
                out[ADVANTAGE_SCALE] += [1.0] * size
                continue
            records[-1][ADVANTAGE_SCALE] = self._scales(result.completions)
            out["prompt_ids"] += [list(c.prompt_token_ids) for c in result.completions]
            out["completion_ids"] += [list(c.token_ids) or [self.eos_token_id] for c in result.completions]
            out[REWARD] += records[-1]["rewards"]
            out[ADVANTAGE_SCALE] += records[-1][ADVANTAGE_SCALE]
        self.records.buffer.save(self.records.buffer_path)
        self.records.log.append(records)
        return {**out, "logprobs": None}  # GRPO recomputes the policy's log-probabilities itself

    def _record_group(self, result: GroupResult, step: int, index: int) -> dict[str, Any]:
        instance, buffer = result.instance, self.records.buffer
        record: dict[str, Any] = {
            "step": step,
            "group": index,
            "task_id": instance.task_id,
            "depth": instance.depth,
            "from_buffer": instance.from_buffer,
            "diverge": instance.diverge,
            "shown": result.shown,
            "adapter": self.adapter,
            "error": result.error,
        }
        if result.completions is None:
            return {**record, "buffer_scores": buffer.score_quantiles()}
        scores = [g.score for g in result.grades]
        rewards = [
            improvement_reward(s, instance.previous_score, self.scoring.binary, self.method.delta_max) for s in scores
        ]
        update = buffer.add_group(instance, [Step(c.text, s) for c, s in zip(result.completions, scores)], rewards)
        return {
            **record,
            "prompt_tokens": len(result.completions[0].prompt_token_ids),
            "scores": scores,
            "rewards": rewards,
            "learnability": update.child.score,
            "rescored_from": update.rescored_from,
            "child_entered": update.entered,
            "child_depth": update.child.depth,
            "buffer_size": len(buffer),
            "buffer_scores": buffer.score_quantiles(),
        }

    def _scales(self, completions: list[Completion]) -> list[float]:
        if self.scoring.diversity is None:
            return [1.0] * len(completions)
        return self.scoring.diversity.scales([c.text for c in completions])


class ExitRollout:
    """TRL's ``rollout_func`` for ExIt, on every training process.

    GRPOTrainer hands each process its slice of the generation batch, and a
    group's copies may straddle processes. So the slices are gathered, the
    main process generates and scores the whole batch (one buffer, one group
    log, one server client), and each process takes back its own slice.
    ``generator`` is None on the other processes.
    """

    def __init__(self, prompts: list[str], generator: ExitGenerator | None) -> None:
        self.prompts = prompts  # GRPO's dataset: one prompt per distinct task
        self.generator = generator

    def __call__(self, prompts: list[Any], trainer: Any) -> dict[str, Any]:
        accelerator = trainer.accelerator
        everyone = gather_object(prompts)  # in process order, as GRPOTrainer gathers the rewards
        batch = [self.generator(everyone, trainer) if self.generator is not None else None]
        batch = broadcast_object_list(batch)[0]
        mine = slice(accelerator.process_index * len(prompts), (accelerator.process_index + 1) * len(prompts))
        return {key: value[mine] if isinstance(value, list) else value for key, value in batch.items()}


@contextmanager
def open_rollout(
    run: RunDir, iteration: int, buffer: LearnabilityBuffer | None, through_step: int, tokenizer: Any
) -> Iterator[ExitRollout]:
    """The rollout function of iteration ``iteration``, its resources released on exit.

    ``buffer`` is None on all but the main process, which alone holds the
    generator: the servers the train stage started
    (:func:`~pipeline.methods.exit.layout.read_servers`), a pool of
    ``grader.workers`` grading processes, and ``groups.jsonl``, kept up to
    ``through_step`` (the step of the checkpoint being resumed). It first
    checks that every training task's prompt fits the model.
    """
    config = run.config
    tasks = prompt_index(load_tasks(config.tasks.train, "train"))
    if buffer is None:
        yield ExitRollout(list(tasks), None)
        return
    fitter = PromptFitter(
        config.rollout.templates,
        config.rollout.history_window,
        config.model.max_model_len - config.rollout.sampling.max_tokens,
        chat_template_counter(tokenizer),
    )
    for task in tasks.values():
        fitter.check_task(task)
    servers = read_servers(run, iteration)
    with ExitStack() as stack:
        portal = stack.enter_context(start_blocking_portal())
        client = ServiceClient(
            [Endpoint(url) for url in servers.urls],
            servers.model,
            config.rollout.max_concurrency,
            config.rollout.request_timeout_s,
            config.rollout.max_retries,
        )
        stack.callback(portal.call, client.aclose)
        pool = stack.enter_context(grading_pool(config))
        groups = GroupLog(groups_path(run, iteration), through_step)
        stack.callback(groups.close)
        generator = ExitGenerator(
            config,
            TrainingPrompts(tasks, fitter),
            GroupRecords(buffer, buffer_path(run, iteration), groups),
            PolicyServers(client, portal, sync_dir(run, iteration), f"{config.run.name}-exit{iteration}"),
            Scoring(
                pooled_grading(pool, config.grader.name, config.grader.options),
                get_grader(config.grader.name, **config.grader.options).binary,
                DiversityScorer() if config.method.diversity_bonus else None,
            ),
            tokenizer.eos_token_id,
        )
        yield ExitRollout(list(tasks), generator)
