"""The component registry: ``(kind, name)`` → (config model, factory, provider).

Built-in components are plugins like any other: each built-in module implements
``elfkit_register_components`` and is registered with the same pluggy manager as the
``elfkit`` entry points and one-file plugins.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.util
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pluggy
from pydantic import BaseModel

from elfkit import hookspecs
from elfkit.errors import RegistryError

ENTRY_POINT_GROUP = "elfkit"

KINDS: tuple[str, ...] = (
    "dataset", "embedder", "backbone", "target", "time", "sampler", "guidance",
    "objective", "evaluator", "exporter",
)

# Modules whose hookimpls register the built-in components (order does not matter).
BUILTIN_MODULES: tuple[str, ...] = (
    "elfkit.components.targets",
    "elfkit.components.time",
    "elfkit.components.samplers",
    "elfkit.components.guidance",
    "elfkit.components.backbones",
    "elfkit.components.objectives",
    "elfkit.components.embedders",
    "elfkit.components.datasets",
    "elfkit.components.evaluators",
    "elfkit.components.exporters",
)


@dataclass(frozen=True)
class PluginSource:
    """Where a plugin's code came from, for provenance: a one-file plugin (absolute path and
    sha256 of its bytes) or an installed distribution (name and version, via its entry point)."""

    file: str | None = None
    sha256: str | None = None
    distribution: str | None = None
    version: str | None = None

    def as_dict(self) -> dict[str, str]:
        return {k: v for k, v in self.__dict__.items() if v is not None}

    def describe(self) -> str:
        if self.file is not None:
            return f"file {self.file} (sha256 {(self.sha256 or '?')[:12]}…)"
        return f"distribution {self.distribution} {self.version or ''}".rstrip()


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def missing_sources(entries: Iterable[dict[str, Any]]) -> list[str]:
    """What a recipe's ``provenance`` names that this process cannot load, one message each:
    a plugin file that is gone, or a distribution that is not installed."""
    from importlib.metadata import PackageNotFoundError, version
    problems = []
    for e in entries:
        what = f"{e.get('component', '?')} came from"
        if e.get("file"):
            if not Path(e["file"]).is_file():
                problems.append(f"{what} the plugin file {e['file']} (sha256 {str(e.get('sha256', '?'))[:12]}…), "
                                "which is missing: restore it, or point `plugins:` and `provenance:` at its new place")
        elif e.get("distribution"):
            try:
                version(e["distribution"])
            except PackageNotFoundError:
                pin = f"=={e['version']}" if e.get("version") else ""
                problems.append(f"{what} the distribution {e['distribution']} {e.get('version', '')}".rstrip()
                                + f", which is not installed: pip install '{e['distribution']}{pin}'")
    return problems


@dataclass(frozen=True)
class ComponentSpec:
    kind: str
    name: str
    factory: Callable[[Any], Any]
    config: type[BaseModel]
    provider: str
    description: str = ""
    source: PluginSource | None = None
    """None for elfkit's built-ins."""

    def build(self, config: BaseModel | dict[str, Any] | None = None) -> Any:
        cfg = config if isinstance(config, BaseModel) else self.config(**(config or {}))
        return self.factory(cfg)


@dataclass
class PluginProblem:
    plugin: str
    message: str


@dataclass
class Registry:
    """All components known to this process, plus the plugins that failed to load."""

    components: dict[tuple[str, str], ComponentSpec] = field(default_factory=dict)
    problems: list[PluginProblem] = field(default_factory=list)
    plugin_manager: pluggy.PluginManager | None = None

    def add(self, spec: ComponentSpec) -> None:
        if spec.kind not in KINDS:
            raise RegistryError(
                f"plugin '{spec.provider}' registers unknown kind '{spec.kind}' for "
                f"'{spec.name}'; kinds are: {', '.join(KINDS)}")
        if not isinstance(spec.config, type) or not issubclass(spec.config, BaseModel):
            raise RegistryError(
                f"plugin '{spec.provider}': config for {spec.kind} '{spec.name}' must be a "
                "pydantic BaseModel subclass")
        key = (spec.kind, spec.name)
        if key in self.components:
            old = self.components[key]
            if _file_overrides_installed(old, spec):
                # developing an installed plugin: the file passed by hand wins, and says so
                self.components[key] = spec
                self.problems.append(PluginProblem(spec.provider, (
                    f"{spec.kind} '{spec.name}' is also provided by the installed {old.provider}; using the "
                    "file (uninstall the package or drop the --plugin file to silence this)")))
                return
            other = old.provider
            raise RegistryError(
                f"duplicate {spec.kind} '{spec.name}': registered by both '{other}' and "
                f"'{spec.provider}'; rename one of them or uninstall a plugin")
        self.components[key] = spec

    def names(self, kind: str) -> list[str]:
        return sorted(n for (k, n) in self.components if k == kind)

    def get(self, kind: str, name: str) -> ComponentSpec:
        if kind not in KINDS:
            raise RegistryError(f"unknown component kind '{kind}'; kinds are: {', '.join(KINDS)}")
        spec = self.components.get((kind, name))
        if spec is None:
            names = self.names(kind)
            hint = difflib.get_close_matches(name, names, n=1)
            did = f" Did you mean '{hint[0]}'?" if hint else ""
            raise RegistryError(
                f"unknown {kind} '{name}'. Registered {kind}s: {', '.join(names) or '(none)'}.{did} A plugin's "
                f"{kind} must be loaded first: `elfkit --plugin FILE.py …`, `plugins: [FILE.py]` in the recipe, or "
                "an installed package with an `elfkit` entry point (`elfkit plugins list` shows what is loaded).")
        return spec

    def build(self, kind: str, name: str, config: BaseModel | dict[str, Any] | None = None) -> Any:
        return self.get(kind, name).build(config)

    def __iter__(self):
        return iter(sorted(self.components.values(), key=lambda s: (s.kind, s.name)))


def _file_overrides_installed(old: ComponentSpec, new: ComponentSpec) -> bool:
    return (new.source is not None and new.source.file is not None
            and old.source is not None and old.source.distribution is not None)


class ComponentRegistrar:
    """What ``elfkit_register_components`` receives: ``add`` records the calling plugin (and
    where its code came from)."""

    def __init__(self, registry: Registry, provider: str, source: PluginSource | None = None) -> None:
        self._registry = registry
        self._provider = provider
        self._source = source

    def add(self, kind: str, name: str, factory: Callable[[Any], Any],
            config: type[BaseModel], description: str = "") -> None:
        desc = description or (factory.__doc__ or "").strip().split("\n")[0]
        self._registry.add(ComponentSpec(kind, name, factory, config, self._provider, desc, self._source))


# ----------------------------------------------------------------------------------------
# Building the plugin manager
# ----------------------------------------------------------------------------------------
def _plugin_label(pm: pluggy.PluginManager, plugin: object, labels: dict[int, str]) -> str:
    """Who provides a plugin: 'distribution (entry point)', 'file:PATH' or the module name."""
    return labels.get(id(plugin)) or pm.get_name(plugin) or repr(plugin)


def load_file_plugin(path: str | Path) -> ModuleType:
    """Import a one-file plugin from a path (no packaging needed)."""
    p = Path(path).expanduser().resolve()
    if not p.is_file():
        raise RegistryError(f"plugin file not found: {path}")
    mod_name = f"elfkit_local_plugin_{p.stem}_{abs(hash(str(p))) % 10**8}"
    spec = importlib.util.spec_from_file_location(mod_name, p)
    if spec is None or spec.loader is None:
        raise RegistryError(f"cannot import plugin file {path}: not a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # a plugin raising at import must not take elfkit down
        sys.modules.pop(mod_name, None)
        raise RegistryError(f"plugin file {path} raised on import: {type(exc).__name__}: {exc}") from exc
    return module


def build_registry(plugin_files: Sequence[str | Path] = (), *, entry_points: bool = True,
                   extra_plugins: Iterable[object] = (), strict: bool = False) -> Registry:
    """Register built-ins, entry points and one-file plugins, check hooks, fill a registry.

    A plugin that raises at import, implements an unknown hook, or registers a
    duplicate is recorded in ``registry.problems`` and skipped (``strict=True`` raises
    instead); the rest of elfkit keeps working. Files named explicitly are always strict:
    the user asked for them.
    """
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    registry = Registry(plugin_manager=pm)
    labels: dict[int, str] = {}
    sources: dict[int, PluginSource] = {}

    def problem(plugin: str, message: str) -> None:
        if strict:
            raise RegistryError(f"plugin '{plugin}': {message}")
        registry.problems.append(PluginProblem(plugin, message))

    for mod in BUILTIN_MODULES:
        pm.register(importlib.import_module(mod), name=mod)
    if entry_points:
        for ep, dist, version in _iter_entry_points():
            if pm.get_plugin(ep.name) is not None or pm.is_blocked(ep.name):
                continue
            try:
                plugin = ep.load()
            except Exception as exc:
                problem(f"{dist} ({ep.name})", f"failed to import: {type(exc).__name__}: {exc}")
                continue
            labels[id(plugin)] = f"{dist} ({ep.name})"
            sources[id(plugin)] = PluginSource(distribution=dist, version=version)
            _register_checked(pm, plugin, ep.name, problem, label=labels[id(plugin)])
    for obj in extra_plugins:
        _register_checked(pm, obj, None, problem, label=getattr(obj, "__name__", repr(obj)))
    for f in plugin_files:
        module = load_file_plugin(f)
        sources[id(module)] = PluginSource(file=str(Path(f).expanduser().resolve()), sha256=file_sha256(f))

        def raise_problem(plugin: str, message: str) -> None:
            raise RegistryError(f"plugin '{plugin}': {message}")
        _register_checked(pm, module, f"file:{f}", raise_problem, label=str(f))

    for impl in pm.hook.elfkit_register_components.get_hookimpls():
        label = _plugin_label(pm, impl.plugin, labels)
        try:
            impl.function(registry=ComponentRegistrar(registry, label, sources.get(id(impl.plugin))))
        except RegistryError as exc:
            if impl.plugin_name.startswith("file:"):
                raise
            problem(label, str(exc))
        except Exception as exc:
            if impl.plugin_name.startswith("file:"):
                raise RegistryError(f"plugin '{label}' raised while registering: {exc}") from exc
            problem(label, f"raised while registering: {type(exc).__name__}: {exc}")
    return registry


def _register_checked(pm: pluggy.PluginManager, plugin: object, name: str | None,
                      problem: Callable[[str, str], None], label: str) -> None:
    """Register, then verify every ``elfkit_*`` hook the plugin implements is known."""
    try:
        pm.register(plugin, name=name)
    except Exception as exc:
        problem(label, f"invalid hook implementation: {exc}")
        return
    known = {n for n in dir(hookspecs) if n.startswith("elfkit_")}
    unknown = [n for n in dir(plugin) if n.startswith("elfkit_") and n not in known
               and callable(getattr(plugin, n))]
    if unknown:
        pm.unregister(plugin)
        hint = difflib.get_close_matches(unknown[0], known, n=1)
        did = f" (did you mean '{hint[0]}'?)" if hint else ""
        problem(label, f"unknown hook '{unknown[0]}'{did}; known hooks: {', '.join(sorted(known))}")
        return
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        pm.unregister(plugin)
        problem(label, str(exc))


def _iter_entry_points():
    from importlib.metadata import distributions
    seen = set()
    for dist in distributions():
        for ep in dist.entry_points:
            if ep.group == ENTRY_POINT_GROUP and (ep.name, ep.value) not in seen:
                seen.add((ep.name, ep.value))
                yield ep, dist.metadata["Name"], dist.version


_CACHE: dict[tuple[str, ...], Registry] = {}


def env_plugin_files() -> list[str]:
    """One-file plugins named in ``ELFKIT_PLUGINS`` (os.pathsep-separated; set by ``elfkit --plugin``)."""
    return [p for p in os.environ.get("ELFKIT_PLUGINS", "").split(os.pathsep) if p]


def default_registry(plugin_files: Sequence[str | Path] = ()) -> Registry:
    """The process-wide registry, built once per distinct set of one-file plugins."""
    files = tuple(dict.fromkeys(str(Path(p).resolve()) for p in [*env_plugin_files(), *plugin_files]))
    if files not in _CACHE:
        _CACHE[files] = build_registry(files)
    return _CACHE[files]
