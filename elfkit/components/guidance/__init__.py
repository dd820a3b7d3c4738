"""Built-in guidance."""

from __future__ import annotations

from elfkit.hookspecs import hookimpl


@hookimpl
def elfkit_register_components(registry) -> None:
    """Registered in this package's modules (filled in as they land)."""
