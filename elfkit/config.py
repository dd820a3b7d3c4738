"""Base class for every component config: strict keys, frozen, documented fields."""

from __future__ import annotations

from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator


def accepts_bool(annotation: Any) -> bool:
    """Whether a field annotation admits a YAML boolean (``bool``, ``Any``, a union or Literal with one)."""
    if annotation is bool or annotation is Any:
        return True
    if get_origin(annotation) is Literal:
        return any(isinstance(v, bool) for v in get_args(annotation))
    return any(accepts_bool(a) for a in get_args(annotation))


class ComponentConfig(BaseModel):
    """Unknown keys are errors; field docstrings become the reference documentation.

    A boolean is refused where the field is a number: pydantic would read ``steps: true`` as
    1 step, a silent typo (``true`` for a count is never what was meant).
    """

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True,
                              protected_namespaces=())

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, bool) and info.field_name is not None:
            field = cls.model_fields.get(info.field_name)
            if field is not None and not accepts_bool(field.annotation):
                raise ValueError(f"expects a number, got {str(value).lower()} (a boolean is not a number here)")
        return value
