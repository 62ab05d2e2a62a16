"""Tasks from reasoning-gym's procedural datasets, graded by the ``reasoning_gym`` grader.

reasoning-gym generates entry ``i`` of a dataset from its seed and ``i``
alone, offline, so the same options give the same tasks in any process. A
task's reference names its entry (:func:`rewards.reasoning_gym.reference`),
which the grader builds again to call the dataset's own ``score_answer``.

reasoning-gym seeds entry ``i`` of seed ``s`` with ``s + i``, so seeds 0 and
1 would share all but one entry: the source hands it a seed hashed from its
own (:func:`stream_seed`), which puts different seeds far apart.

Train and eval never share a problem, as in the ``arithmetic`` source: both
splits draw from one seeded stream of entries, and a problem's split is a
function of its question text (:func:`pipeline.tasks.arithmetic.split_of`), so
asking for more eval tasks never changes the train tasks, whatever the other
options of each split's section.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from typing import Any

from pipeline.tasks.arithmetic import SPLITS, check_split_options, split_of
from pipeline.tasks.base import Task, register_task_source
from pipeline.tasks.rows import DEFAULT_PROMPT_TEMPLATE, check_template, stable_id, wrap_prompt
from rewards.reasoning_gym import make_dataset, reference

SOURCE_OPTIONS = ("seed", "size")
"""Config fields the source sets itself: the seed from its ``seed`` option, the size from the draws a split needs."""
SPARE_DRAWS = 100
"""Draws beyond twice a split's expected need before a dataset counts as exhausted (too few distinct problems)."""
STREAM_SEEDS = 2**31
"""Hashed seeds fall below this, so that seed + index stays below 2**32 for datasets that seed numpy with it."""


def stream_seed(seed: int) -> int:
    """The reasoning-gym seed of the source's ``seed``: a hash, so that nearby seeds draw far-apart entries."""
    digest = hashlib.sha256(f"reasoning_gym:{seed}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % STREAM_SEEDS


@register_task_source("reasoning_gym")
class ReasoningGymTaskSource:
    """Options:

    - ``dataset``: the reasoning-gym dataset (``gsm_symbolic``,
      ``basic_arithmetic``, ``chain_sum``, ``simple_equations``, ...); an
      unknown name fails when the config loads.
    - ``config``: the dataset's own options, the fields of its config class
      other than ``seed`` and ``size`` (``difficulty``, ``min_digits``,
      ``max_terms``, ...); one the dataset refuses fails when the config loads.
    - ``seed``: the same seed (and options) gives the same tasks; other seeds
      give other tasks (:func:`stream_seed`).
    - ``n_train``, ``n_eval``: tasks per split.
    - ``eval_fraction``: the share of the dataset's problems reserved for eval.
      A dataset with few distinct problems limits the counts: asking for more
      than about ``eval_fraction`` of them raises an error.
    - ``prompt_template``: wraps the question; must contain ``{question}``.

    ``reference`` names the entry for the grader (dataset, config, index,
    answer, digest); metadata holds ``dataset`` and ``index``.
    """

    def __init__(
        self,
        dataset: str | None = None,
        config: Mapping[str, Any] | None = None,
        seed: int = 0,
        n_train: int = 500,
        n_eval: int = 100,
        eval_fraction: float = 0.3,
        prompt_template: str = DEFAULT_PROMPT_TEMPLATE,
    ) -> None:
        if not isinstance(dataset, str):
            raise ValueError(
                "the reasoning_gym source needs `dataset`, a reasoning-gym dataset name such as gsm_symbolic"
            )
        config = {} if config is None else config
        if not isinstance(config, Mapping):
            raise ValueError(f"config must be a mapping of {dataset}'s options; got {config!r}")
        if managed := [key for key in SOURCE_OPTIONS if key in config]:
            raise ValueError(f"config.{managed[0]} is the source's to set: use its options seed, n_train and n_eval")
        check_split_options(n_train, n_eval, eval_fraction)
        check_template(prompt_template)
        self.dataset = dataset
        self.config = dict(config)
        self.seed = seed
        self.sizes = {"train": n_train, "eval": n_eval}
        self.eval_fraction = eval_fraction
        self.prompt_template = prompt_template
        make_dataset(dataset, self._dataset_config(1))  # an unknown name or a refused config fails here

    def load(self, split: str) -> list[Task]:
        if split not in SPLITS:
            raise ValueError(f"reasoning_gym task source has splits {SPLITS}, not {split!r}")
        count = self.sizes[split]
        share = self.eval_fraction if split == "eval" else 1 - self.eval_fraction
        draws = 2 * math.ceil(count / share) + SPARE_DRAWS
        config = self._dataset_config(draws)
        dataset = make_dataset(self.dataset, config)
        found: dict[str, Task] = {}
        for index in range(draws):
            if len(found) == count:
                break
            entry = dataset[index]
            question = entry["question"]
            if question not in found and split_of(question, self.eval_fraction) == split:
                found[question] = self._task(config, index, entry)
        if len(found) < count:
            raise ValueError(
                f"reasoning_gym: only {len(found)} distinct {self.dataset!r} problems found for split {split!r} in "
                f"{draws} draws, {count} asked; ask for fewer, widen the dataset's config, or change eval_fraction"
            )
        return list(found.values())

    def _dataset_config(self, size: int) -> dict[str, Any]:
        return {**self.config, "seed": stream_seed(self.seed), "size": size}

    def _task(self, config: dict[str, Any], index: int, entry: dict[str, Any]) -> Task:
        question = entry["question"]
        return Task(
            stable_id(f"rg-{self.dataset}", question, entry["answer"]),
            wrap_prompt(question, self.prompt_template),
            reference(self.dataset, config, index, entry),
            {"dataset": self.dataset, "index": index},
        )
