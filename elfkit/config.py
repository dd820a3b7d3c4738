"""Base class for every component config: strict keys, frozen, documented fields."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class ComponentConfig(BaseModel):
    """Unknown keys are errors; field docstrings become the reference documentation."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True,
                              protected_namespaces=())
