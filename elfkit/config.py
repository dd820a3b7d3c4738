"""The validated-config base: strict keys, documented fields, no booleans where numbers are meant.

Recipe sections (:mod:`elfkit.recipe.schema`), component configs and exporter specs all derive
from :class:`StrictModel`, so one rule refuses ``steps: true`` everywhere.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator

BOOL_REFUSAL = "a boolean is not a number here"
"""The words every refusal ends with (the recipe loader prints such a message as it is)."""


def accepts_bool(annotation: Any) -> bool:
    """Whether a field annotation admits a YAML boolean (``bool``, ``Any``, a union or Literal with one)."""
    if annotation is bool or annotation is Any:
        return True
    if get_origin(annotation) is Literal:
        return any(isinstance(v, bool) for v in get_args(annotation))
    return any(accepts_bool(a) for a in get_args(annotation))


def _alternatives(annotation: Any) -> list[Any]:
    """A union's members without ``None``, or the annotation alone."""
    if get_origin(annotation) in (Union, UnionType):
        return [a for a in get_args(annotation) if a is not type(None)]
    return [annotation]


def _item_annotation(container: Any, index: int) -> Any:
    """The annotation of item ``index`` of a ``list[X]``/``tuple[X, ...]``/``tuple[X, Y]`` (Any if untyped)."""
    args = get_args(container)
    if not args:
        return Any
    if get_origin(container) is tuple and args[-1] is not Ellipsis:
        return args[index] if index < len(args) else Any
    return args[0]


def bool_for_number(value: Any, annotation: Any) -> str | None:
    """Why ``value`` puts a YAML boolean where ``annotation`` wants a number, or None if it does not.

    pydantic's lax mode reads ``true`` as 1 and ``false`` as 0 for int and float fields, also
    inside lists, tuples and dicts of them: ``lr: true`` would train at LR 1.0 and
    ``steps: true`` for one step. A boolean for a number is never what was meant.
    """
    members = _alternatives(annotation)
    if isinstance(value, bool):
        numbers = [m for m in members if m in (int, float)]
        if not numbers or accepts_bool(annotation):
            return None      # not a number slot (pydantic names the type error) or a bool is allowed
        kind = "a whole number" if numbers == [int] else "a number"
        return f"expects {kind}, got {str(value).lower()} ({BOOL_REFUSAL})"
    if isinstance(value, list | tuple):
        sequences = [m for m in members if get_origin(m) in (list, tuple, Sequence)]
        if len(sequences) == 1:
            for i, item in enumerate(value):
                if why := bool_for_number(item, _item_annotation(sequences[0], i)):
                    return f"item {i} {why}"
    elif isinstance(value, dict):
        mappings = [m for m in members if get_origin(m) in (dict, Mapping) and len(get_args(m)) == 2]
        if len(mappings) == 1:
            for key, item in value.items():
                if why := bool_for_number(item, get_args(mappings[0])[1]):
                    return f"key {key!r} {why}"
    return None


class StrictModel(BaseModel):
    """Unknown keys are errors; field docstrings become the reference documentation; a boolean
    given for a number is refused (:func:`bool_for_number`)."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, protected_namespaces=())

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        field = cls.model_fields.get(info.field_name) if info.field_name is not None else None
        if field is not None and (why := bool_for_number(value, field.annotation)):
            raise ValueError(why)
        return value


class ComponentConfig(StrictModel):
    """Every component's config: a frozen :class:`StrictModel` (a built component cannot drift
    from the config recorded in its run's resolved recipe)."""

    model_config = ConfigDict(frozen=True)
