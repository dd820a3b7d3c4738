"""Every elfkit hook, in one module (the pytest way). Hook names start with ``elfkit_``.

Lifecycle:
1. built-in component modules, then ``elfkit`` entry points, then one-file plugins
   (``plugins:`` in a recipe, ``elfkit --plugin FILE``) are registered with pluggy;
2. ``check_pending()`` rejects implementations of hooks that do not exist here
   (a misspelt hook name is an error naming the plugin);
3. ``elfkit_register_components`` is called once on every plugin to fill the registry.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from elfkit.registry import ComponentRegistrar

PROJECT = "elfkit"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


# ----------------------------------------------------------------------------------------
# Registration
# ----------------------------------------------------------------------------------------
@hookspec
def elfkit_register_components(registry: ComponentRegistrar) -> None:
    """Register components by calling ``registry.add(kind, name, factory, config)``.

    Called once per plugin when the registry is built. ``kind`` is one of
    :data:`elfkit.registry.KINDS`; ``config`` is a pydantic model with
    ``extra="forbid"`` (its fields are the recipe keys); ``factory(config)`` builds the
    component. A ``(kind, name)`` pair registered twice is an error naming both plugins.

    :param registry: a registrar bound to the calling plugin (so the registry knows who
        provided each component).

    versionadded: 0.1
    """
