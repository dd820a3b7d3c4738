"""Load a recipe: YAML → overrides → schema → per-component configs, with helpful errors.

Every error names the file, the YAML line, the dotted key, what is allowed, and a
"did you mean" suggestion for misspelt keys or component names.
"""

from __future__ import annotations

import copy
import difflib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from elfkit.errors import RecipeError, RegistryError
from elfkit.recipe.schema import COMPONENT_SLOTS, ComponentRef, Recipe
from elfkit.registry import Registry, default_registry, missing_sources

Loc = tuple[str | int, ...]

# short aliases accepted in --set / sweep grids
ALIASES = {
    "target": "target.name",
    "sampler": "sample.sampler.name",
    "guidance": "sample.guidance.name",
}
PREFIX_ALIASES = {"sampler.": "sample.sampler.", "guidance.": "sample.guidance.", "grid.": "sample.grid."}


def canonical_key(key: str) -> str:
    """Expand the short forms used on the command line (``sampler.steps`` → ``sample.sampler.steps``)."""
    if key in ALIASES:
        return ALIASES[key]
    for short, full in PREFIX_ALIASES.items():
        if key.startswith(short):
            return full + key[len(short):]
    return key


# ----------------------------------------------------------------------------------------
# YAML with line numbers
# ----------------------------------------------------------------------------------------
def _line_index(node: yaml.Node, loc: Loc = (), out: dict[Loc, int] | None = None) -> dict[Loc, int]:
    """Map every dotted location to its 1-based line (keys point at the key's line)."""
    out = {} if out is None else out
    out.setdefault(loc, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            key_loc = loc + (k.value,)
            out[key_loc] = k.start_mark.line + 1
            _line_index(v, key_loc, out)
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            _line_index(v, loc + (i,), out)
    return out


def duplicate_keys(node: yaml.Node | None, loc: Loc = ()) -> list[tuple[Loc, int, int]]:
    """Every key written twice in one mapping, anywhere in the document: (dotted location, line
    of the first, line of the repeat). YAML's loaders keep the later value silently; a recipe
    must not (the earlier line would look like it applies). Merge keys (``<<``) may override."""
    out: list[tuple[Loc, int, int]] = []
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for k, v in node.value:
            key_loc = loc + (k.value,)
            if isinstance(k, yaml.ScalarNode) and k.tag != "tag:yaml.org,2002:merge":
                if k.value in seen:
                    out.append((key_loc, seen[k.value], k.start_mark.line + 1))
                else:
                    seen[k.value] = k.start_mark.line + 1
            out += duplicate_keys(v, key_loc)
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            out += duplicate_keys(v, loc + (i,))
    return out


def read_yaml(path: Path) -> tuple[dict[str, Any], dict[Loc, int]]:
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"recipe file not found: {path}")
    text = path.read_text(encoding="utf-8")
    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise RecipeError(f"{where}: invalid YAML: {getattr(exc, 'problem', exc)}") from None
    dups = duplicate_keys(node)
    if dups:
        raise RecipeError("\n".join(f"{path}:{again}: {'.'.join(map(str, loc))}: duplicate key (first set on line "
                                    f"{first}); keep one" for loc, first, again in dups))
    if data is None:
        raise RecipeError(f"{path}: the recipe is empty")
    if not isinstance(data, dict):
        raise RecipeError(f"{path}:1: a recipe must be a mapping of sections, got {type(data).__name__}")
    return data, (_line_index(node) if node is not None else {})


# ----------------------------------------------------------------------------------------
# --set overrides
# ----------------------------------------------------------------------------------------
def override_origins(overrides: Sequence[str]) -> dict[str, str]:
    """Canonical dotted key → the ``--set`` item that set it, to blame the right place in errors."""
    return {canonical_key(item.split("=", 1)[0].strip()): item for item in overrides if "=" in item}


def _origin(origins: dict[str, str], loc: Loc) -> str | None:
    """The --set item that set ``loc`` (or its ``name``, or a section above it), if any."""
    dotted = ".".join(map(str, loc))
    for key in (f"{dotted}.name", dotted):
        if key in origins:
            return origins[key]
    return next((item for key, item in origins.items() if dotted.startswith(key + ".")), None)


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``a.b=value`` overrides in order (value parsed as YAML, so ``16`` is an int).

    Setting a component's ``name`` to a different component resets that component's other keys
    to the new one's defaults; later overrides can then set them (``sampler=heun sampler.steps=8``).
    """
    data = copy.deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise RecipeError(f"--set expects KEY=VALUE, got '{item}' (e.g. --set train.steps=100)")
        key, raw = item.split("=", 1)
        key = canonical_key(key.strip())
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        set_dotted(data, key, value)
    return data


def set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    cur: Any = data
    for i, part in enumerate(parts[:-1]):
        nxt = cur.get(part) if isinstance(cur, dict) else None
        if nxt is None:
            nxt = {}
            cur[part] = nxt
        elif isinstance(nxt, str) and i + 1 < len(parts):
            # component shorthand `sampler: euler` → {name: euler}
            nxt = {"name": nxt}
            cur[part] = nxt
        elif not isinstance(nxt, dict):
            raise RecipeError(f"--set {key}: '{'.'.join(parts[:i + 1])}' is a {type(nxt).__name__}, not a section")
        cur = nxt
    # Switching a component (`--set sample.sampler.name=euler`) starts from the new component's
    # defaults: the old one's keys (e.g. `gamma`) would not be valid for it.
    if parts[-1] == "name" and isinstance(cur, dict) and cur.get("name") not in (None, value):
        cur.clear()
    cur[parts[-1]] = value


# ----------------------------------------------------------------------------------------
# Validation with readable errors
# ----------------------------------------------------------------------------------------
def _fields_at(model: type[BaseModel], loc: Loc) -> list[str]:
    """Valid field names at a location of the schema (for suggestions)."""
    cur: Any = model
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        fields = getattr(cur, "model_fields", None)
        if not fields or part not in fields:
            return []
        ann = fields[part].annotation
        cur = _model_in(ann)
        if cur is None:
            return []
    return list(getattr(cur, "model_fields", {}) or {})


def _model_in(ann: Any) -> type[BaseModel] | None:
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann
    for arg in getattr(ann, "__args__", ()) or ():
        m = _model_in(arg)
        if m is not None:
            return m
    return None


def _format_errors(exc: ValidationError, source: str, lines: dict[Loc, int], prefix: Loc,
                   model: type[BaseModel]) -> str:
    msgs = []
    for err in exc.errors(include_url=False):
        loc = prefix + tuple(err["loc"])
        dotted = ".".join(str(p) for p in loc)
        line = _nearest_line(lines, loc)
        where = f"{source}:{line}" if line else source
        msg = err["msg"]
        hint = ""
        if err["type"] == "extra_forbidden":
            valid = _fields_at(model, tuple(err["loc"]))
            close = difflib.get_close_matches(str(loc[-1]), valid, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            msg = f"unknown key '{loc[-1]}'. Allowed here: {', '.join(valid)}."
        elif err["type"] == "missing":
            msg = "required key is missing"
        elif err["type"] == "int_type" and isinstance(err.get("input"), bool):
            msg = f"expects a whole number, got {str(err['input']).lower()} (a boolean is not a count)"
        else:
            msg = f"{msg} (got {err.get('input')!r})"
        msgs.append(f"{where}: {dotted}: {msg}{hint}")
    return "\n".join(msgs)


def _nearest_line(lines: dict[Loc, int], loc: Loc) -> int | None:
    for n in range(len(loc), -1, -1):
        if loc[:n] in lines:
            return lines[loc[:n]]
    return None


def _get(obj: Any, path: tuple[str, ...]) -> Any:
    for p in path:
        obj = getattr(obj, p, None)
        if obj is None:
            return None
    return obj


def resolve(recipe: Recipe, registry: Registry, source: str = "<recipe>",
            lines: dict[Loc, int] | None = None, origins: dict[str, str] | None = None) -> Recipe:
    """Validate every component reference against its registered config model."""
    lines = lines or {}
    origins = origins or {}
    refs: list[tuple[Loc, str, ComponentRef]] = []
    for path, kind in COMPONENT_SLOTS:
        ref = _get(recipe, path)
        if ref is not None:
            refs.append((path, kind, ref))
    for i, ref in enumerate(recipe.eval.evaluators):
        refs.append((("eval", "evaluators", i), "evaluator", ref))
    errors = []
    for loc, kind, ref in refs:
        where = f"{source}:{_nearest_line(lines, loc) or '?'}"
        if (item := _origin(origins, loc)) is not None:
            where = f"--set {item} (applied to {source})"
        try:
            spec = registry.get(kind, ref.name)
        except RegistryError as exc:
            errors.append(f"{where}: {'.'.join(map(str, loc))}.name: {exc}")
            continue
        ref._source = spec.source
        try:
            ref._config = spec.config(**ref.params)
        except ValidationError as exc:
            errors.append(_format_component_errors(exc, source, lines, loc, spec.config, kind, ref.name, origins))
    if errors:
        raise RecipeError("\n".join(errors))
    return recipe


def _format_component_errors(exc: ValidationError, source: str, lines: dict[Loc, int], loc: Loc,
                             config: type[BaseModel], kind: str, name: str,
                             origins: dict[str, str] | None = None) -> str:
    msgs = []
    for err in exc.errors(include_url=False):
        full = loc + tuple(err["loc"])
        line = _nearest_line(lines, full)
        where = f"{source}:{line}" if line else source
        if (item := (origins or {}).get(".".join(map(str, full)))) is not None:
            where = f"--set {item} (applied to {source})"
        dotted = ".".join(str(p) for p in full)
        if err["type"] == "extra_forbidden":
            valid = list(config.model_fields)
            close = difflib.get_close_matches(str(full[-1]), valid, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            msgs.append(f"{where}: {dotted}: unknown key '{full[-1]}' for {kind} '{name}'. "
                        f"Allowed: name, {', '.join(valid)}.{hint}")
        else:
            msgs.append(f"{where}: {dotted}: {err['msg']} (got {err.get('input')!r})")
    return "\n".join(msgs)


def validate_recipe(data: dict[str, Any], *, source: str = "<recipe>", lines: dict[Loc, int] | None = None,
                    registry: Registry | None = None, origins: dict[str, str] | None = None) -> Recipe:
    """Schema → registry → component configs. Raises RecipeError with every problem found.

    ``origins`` (from :func:`override_origins`) lets an error blame the ``--set`` item that
    set a value instead of the YAML line it replaced."""
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        raise RecipeError(_format_errors(exc, source, lines or {}, (), Recipe)) from None
    return resolve(recipe, registry or default_registry(), source, lines, origins)


def load_recipe(path: str | Path, overrides: Sequence[str] = (), *, registry: Registry | None = None,
                extra_plugins: Sequence[str | Path] = ()) -> Recipe:
    """Read, override, validate. One-file plugins named in the recipe are loaded first."""
    path = Path(path)
    data, lines = read_yaml(path)
    data = apply_overrides(data, overrides)
    gone = missing_sources(data.get("provenance") or [])
    if gone:
        raise RecipeError("\n".join(f"{path}: provenance: {g}" for g in gone))
    plugin_files = [str((path.parent / p).resolve()) if not Path(p).is_absolute() else p
                    for p in data.get("plugins", []) or []]
    missing = [p for p in plugin_files if not Path(p).is_file()]
    if missing:
        raise RecipeError(f"{path}: plugins: file not found: {', '.join(missing)} (paths are relative to the recipe)")
    if registry is None:
        files = [*extra_plugins, *plugin_files]
        registry = default_registry(files)
    recipe_data = dict(data)
    recipe_data["plugins"] = plugin_files
    return validate_recipe(recipe_data, source=str(path), lines=lines, registry=registry,
                           origins=override_origins(overrides))


# ----------------------------------------------------------------------------------------
# The resolved recipe (defaults filled in)
# ----------------------------------------------------------------------------------------
def resolved_dict(recipe: Recipe) -> dict[str, Any]:
    """The fully resolved recipe: every section and component config with defaults."""
    out = recipe.model_dump(mode="json")

    def filled(ref: ComponentRef | None) -> dict[str, Any] | None:
        if ref is None or ref._config is None:
            return None
        return {"name": ref.name, **ref._config.model_dump(mode="json")}

    for path, _ in COMPONENT_SLOTS:
        parent = out
        for p in path[:-1]:
            parent = parent[p]
        if (slot := filled(_get(recipe, path))) is not None:
            parent[path[-1]] = slot
    evaluators = out["eval"]["evaluators"]
    for i, ref in enumerate(recipe.eval.evaluators):
        if (slot := filled(ref)) is not None:
            evaluators[i] = slot
    # provenance: the plugin behind every non-built-in component, fresh from this resolution;
    # --plugin files join `plugins` so validating the run's recipe loads them again
    out.pop("provenance", None)
    refs = [(kind, _get(recipe, path)) for path, kind in COMPONENT_SLOTS]
    refs += [("evaluator", ref) for ref in recipe.eval.evaluators]
    provenance: list[dict[str, Any]] = []
    for kind, ref in refs:
        if ref is not None and ref._source is not None:
            entry = {"component": f"{kind}/{ref.name}", **ref._source.as_dict()}
            if entry not in provenance:
                provenance.append(entry)
    if provenance:
        files = [e["file"] for e in provenance if "file" in e]
        out["plugins"] = list(dict.fromkeys([*out.get("plugins", []), *files]))
        out["provenance"] = provenance
    return out


def dump_yaml(data: dict[str, Any]) -> str:
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
