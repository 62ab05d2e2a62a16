"""The base classes of config sections, and the parts a method's section holds (:class:`TeacherSection`), kept
apart so that each method's package can define its own section.

:class:`MethodSection` is the interface a run's ``method`` section offers to
the layers below ``pipeline/methods/``: the stages of its plan, whether
training continues the previous iteration's model, and which stages each
stage reads. Those layers call these, and never ask which method a run uses
(docs/ARCHITECTURE.md, "The method registry"). The section is the method
itself: each method's class subclasses :class:`pipeline.methods.base.Method`,
which adds the functions of its stages, its training entry point, its model
card's rows and its checks of the whole config. This module imports nothing
else of the config, so that the whole config (:mod:`pipeline.config.settings`)
holds a method section without an import circle.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, TypeVar, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

F = TypeVar("F", bound=Callable[..., Any])
_STAGE_MARK = "_stage_serves_model"  # the attribute @stage sets on a stage function


class StrictModel(BaseModel):
    """The base of every config section: what no section can use is refused here once, for all of them.

    Unknown keys (a typo), infinite and NaN numbers (an ``.inf`` timeout
    never fires, an ``.inf`` learning rate trains the model to NaN) and a
    boolean where a number belongs (pydantic reads ``turns: true`` as 1;
    YAML's ``true`` is never meant as a count). Numbers stay lax otherwise:
    YAML reads ``1e-6`` as a string, which a float field must still take.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _no_boolean_for_a_number(cls, data: Any) -> Any:
        """Refuse ``true``/``false`` given to a number field, naming each such key (a model check, not a field
        check: pydantic allows no field check on the ``name`` that tells the method sections apart)."""
        if not isinstance(data, dict):
            return data
        errors = [
            InitErrorDetails(
                type=PydanticCustomError(
                    "boolean", "expects a number, got the boolean {value}", {"value": str(value).lower()}
                ),
                loc=(key,),
                input=value,
            )
            for key, value in data.items()
            if key in cls.model_fields and _boolean_for_a_number(cls, key, value)
        ]
        if errors:
            raise ValidationError.from_exception_data(cls.__name__, errors)
        return data


def stage(*, serves_model: bool = False) -> Callable[[F], F]:
    """Mark a method of a method's class as a stage of its plan; the plan runs the marked methods in the order the
    class defines them, its own before its bases' (``eval`` last). ``serves_model``: the stage opens a learner, so
    the run loop keeps its servers up for the next such stage (:mod:`pipeline.engine.server_keeper`)."""

    def mark(function: F) -> F:
        setattr(function, _STAGE_MARK, serves_model)
        return function

    return mark


class MethodSection(StrictModel):
    """A method's ``method`` section; each method's class (``pipeline/methods/<name>/method.py``) subclasses it."""

    name: str
    ITERATION_STAGES: ClassVar[tuple[str, ...]] = ()
    """The stages of each iteration 1..N, in order (iteration 0 is the base model's eval): the :func:`stage`
    methods of the class."""
    SERVING_STAGES: ClassVar[frozenset[str]] = frozenset()
    """The stages of the plan that serve a model."""
    REPORTED: ClassVar[tuple[str, ...]] = ()
    """The settings worth a place in the report's header."""

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        """Read the plan off the class's :func:`stage` methods: declared once, where the stages are."""
        super().__pydantic_init_subclass__(**kwargs)
        marked: dict[str, bool] = {}
        for klass in cls.__mro__:
            for name, value in vars(klass).items():
                if hasattr(value, _STAGE_MARK):
                    marked.setdefault(name, getattr(value, _STAGE_MARK))
        cls.ITERATION_STAGES = tuple(marked)
        cls.SERVING_STAGES = frozenset(name for name, serves in marked.items() if serves)

    def continue_reason(self) -> str | None:
        """Why iteration K > 1 trains on from iteration K-1's model; None when it starts from the base."""
        return None

    def stage_inputs(self, iteration: int, stage: str) -> list[tuple[int, str]]:
        """The stages whose outputs stage ``(iteration, stage)`` reads, so whose redo makes it stale.

        Eval serves iteration K's trained model; train reads the previous
        iteration's model when it continues it. A method adds its own stages'.
        """
        if stage == "train":
            return [(iteration - 1, "train")] if iteration > 1 and self.continue_reason() else []
        if stage == "eval":
            return [(iteration, "train")] if iteration >= 1 else []
        return []


class TeacherSection(StrictModel):
    """Another served model that answers turns > 1 (RISE distillation); here, not in RISE's package, because the
    engine's backends open it."""

    url: str = Field(description="The teacher's OpenAI-compatible endpoint.")
    model: str = Field(description="The model name the teacher's server serves.")
    api_key: str | None = Field(None, description="The teacher server's API key; null: none.")


def attempts_shown(turns: int, history_window: int | None) -> int:
    """The earlier attempts the prompt of a trajectory's last turn shows: ``turns - 1``, cut to the window."""
    return min(turns - 1, history_window or turns - 1)


def _boolean_for_a_number(model: type[BaseModel], key: str, value: Any) -> bool:
    """Whether ``value`` is, or lists, a boolean while field ``key`` takes numbers and no booleans."""
    items = value if isinstance(value, list) else [value]
    annotation = model.model_fields[key].annotation
    return (
        any(isinstance(item, bool) for item in items)
        and _mentions(annotation, (int, float))
        and not _mentions(annotation, (bool, Any))
    )


def _mentions(annotation: Any, types: tuple[Any, ...]) -> bool:
    """Whether a field's type is, or holds (``int | list[int]``, ``dict[str, Any]``), one of ``types``."""
    return annotation in types or any(_mentions(arg, types) for arg in get_args(annotation))
