"""Load a recipe: YAML → overrides → schema → per-component configs, with helpful errors.

Every error names the file, the YAML line, the dotted key, what is allowed, and a
"did you mean" suggestion for misspelt keys or component names.
"""

from __future__ import annotations

import copy
import difflib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from elfkit.config import BOOL_REFUSAL
from elfkit.errors import RecipeError, RegistryError
from elfkit.recipe.schema import COMPONENT_SLOTS, ComponentRef, Recipe
from elfkit.registry import Registry, default_registry, missing_sources

Loc = tuple[str | int, ...]
Overridden = Mapping[Loc, str]
"""Recipe location → the ``--set`` item that set it (errors there blame the option, not a line)."""

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
    if path.is_dir():
        raise RecipeError(f"{path} is a directory; pass a recipe YAML file (e.g. {path / 'recipe.yaml'})")
    if not path.is_file():
        raise RecipeError(f"recipe file not found: {path}")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise RecipeError(f"{path}: cannot read the recipe: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise RecipeError(f"{path}:{line}: not a UTF-8 text file (byte 0x{raw[exc.start]:02x} at offset "
                          f"{exc.start}); a recipe is a YAML text file") from None
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
def split_override(item: str) -> tuple[str, str]:
    """``"a.b=value"`` → (canonical dotted key, raw value); a malformed item is a RecipeError naming it."""
    if "=" not in item:
        raise RecipeError(f"--set expects KEY=VALUE, got '{item}' (e.g. --set train.steps=100)")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key:
        raise RecipeError(f"--set '{item}': the key before '=' is empty; expected KEY=VALUE "
                          "(e.g. --set train.steps=100)")
    if any(not part.strip() for part in key.split(".")):
        raise RecipeError(f"--set '{item}': '{key}' has an empty part between dots; expected a dotted key "
                          "such as sample.sampler.steps")
    return canonical_key(key), raw


def override_locations(overrides: Sequence[str]) -> dict[Loc, str]:
    """Where each ``--set`` item lands in the recipe (later items win), for error messages."""
    out: dict[Loc, str] = {}
    for item in overrides:
        key, _ = split_override(item)
        out[tuple(key.split("."))] = item
    return out


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``a.b=value`` overrides in order (value parsed as YAML, so ``16`` is an int).

    Setting a component's ``name`` to a different component resets that component's other keys
    to the new one's defaults; later overrides can then set them (``sampler=heun sampler.steps=8``).
    """
    data = copy.deepcopy(data)
    for item in overrides:
        key, raw = split_override(item)
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        set_dotted(data, key, value)
    return data


SAMPLING_SECTIONS = ("sample", "eval")
"""The sections ``elfkit sample`` may change: the rest of a checkpoint's recipe is how it was trained."""


def check_sampling_overrides(overrides: Sequence[str]) -> None:
    """Refuse ``--set`` items outside :data:`SAMPLING_SECTIONS` (they would not change the trained
    model, only make the stored recipe lie about it)."""
    for item in overrides:
        key, _ = split_override(item)
        if key.split(".")[0] not in SAMPLING_SECTIONS:
            raise RecipeError(
                f"--set '{item}': elfkit sample accepts only sample.* and eval.* keys, not '{key}'. The model was "
                "trained with the recipe stored in its checkpoint, and that part of it cannot change after "
                f"training; to use another value, train again (elfkit run RECIPE --set {key}=...).")


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
            raise RecipeError(f"--set {key}: '{'.'.join(parts[:i + 1])}' holds a value ({nxt!r}), not a section "
                              "with keys")
        cur = nxt
    # Switching a component (`--set sample.sampler.name=euler`) starts from the new component's
    # defaults: the old one's keys (e.g. `gamma`) would not be valid for it.
    # (Only a component's name: the top-level `name` is the recipe's own, and renaming must keep the recipe.)
    if len(parts) > 1 and parts[-1] == "name" and isinstance(cur, dict) and cur.get("name") not in (None, value):
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
                   model: type[BaseModel], overridden: Overridden | None = None) -> str:
    msgs = []
    for err in exc.errors(include_url=False):
        loc = prefix + tuple(err["loc"])
        dotted = ".".join(str(p) for p in loc)
        where = _where(source, lines, loc, overridden)
        msg = err["msg"]
        hint = ""
        if err["type"] == "extra_forbidden":
            valid = _fields_at(model, tuple(err["loc"]))
            close = difflib.get_close_matches(str(loc[-1]), valid, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            msg = f"unknown key '{loc[-1]}'. Allowed here: {', '.join(valid)}."
        elif err["type"] == "missing":
            msg = "required key is missing"
        else:
            msg = _value_message(err)
        msgs.append(f"{where}: {dotted}: {msg}{hint}")
    return "\n".join(msgs)


def _where(source: str, lines: dict[Loc, int], loc: Loc, overridden: Overridden | None) -> str:
    """``--set ITEM`` when an override set this location (or a part of it), else ``file:line``."""
    blamed = [(len(o), item) for o, item in (overridden or {}).items()
              if o[:len(loc)] == loc or loc[:len(o)] == o]
    if blamed:
        return f"--set {max(blamed)[1]} (applied to {source})"
    line = _nearest_line(lines, loc)
    return f"{source}:{line}" if line else source


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
            lines: dict[Loc, int] | None = None, overridden: Overridden | None = None) -> Recipe:
    """Validate every component reference against its registered config model."""
    lines = lines or {}
    refs: list[tuple[Loc, str, ComponentRef]] = []
    for path, kind in COMPONENT_SLOTS:
        ref = _get(recipe, path)
        if ref is not None:
            refs.append((path, kind, ref))
    for i, ref in enumerate(recipe.eval.evaluators):
        refs.append((("eval", "evaluators", i), "evaluator", ref))
    errors = []
    for loc, kind, ref in refs:
        try:
            spec = registry.get(kind, ref.name)
        except RegistryError as exc:
            where = _where(source, lines, loc + ("name",), overridden)
            errors.append(f"{where}: {'.'.join(map(str, loc))}.name: {exc}")
            continue
        ref._source = spec.source
        try:
            ref._config = spec.config(**ref.params)
        except ValidationError as exc:
            errors.append(_format_component_errors(exc, source, lines, loc, spec.config, kind, ref.name,
                                                   overridden))
    if not errors:
        errors = check_dimensions(recipe, source, lines, overridden)
    if errors:
        raise RecipeError("\n".join(errors))
    return recipe


def _format_component_errors(exc: ValidationError, source: str, lines: dict[Loc, int], loc: Loc,
                             config: type[BaseModel], kind: str, name: str,
                             overridden: Overridden | None = None) -> str:
    msgs = []
    for err in exc.errors(include_url=False):
        full = loc + tuple(err["loc"])
        where = _where(source, lines, full, overridden)
        dotted = ".".join(str(p) for p in full)
        if err["type"] == "extra_forbidden":
            valid = list(config.model_fields)
            close = difflib.get_close_matches(str(full[-1]), valid, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            msgs.append(f"{where}: {dotted}: unknown key '{full[-1]}' for {kind} '{name}'. "
                        f"Allowed: name, {', '.join(valid)}.{hint}")
        else:
            msgs.append(f"{where}: {dotted}: {_value_message(err)}")
    return "\n".join(msgs)


def _value_message(err: Any) -> str:
    """One pydantic error about a value, in words (a boolean refused for a number already names it)."""
    if err["type"] == "value_error" and BOOL_REFUSAL in str(err["msg"]):
        return str(err["msg"]).removeprefix("Value error, ")
    return f"{err['msg']} (got {err.get('input')!r})"


def check_dimensions(recipe: Recipe, source: str = "<recipe>", lines: dict[Loc, int] | None = None,
                     overridden: Overridden | None = None) -> list[str]:
    """Embedder ↔ backbone widths that cannot work together, found before any data or model loads.

    The embedder's width comes from its config's ``expected_dim()`` (None = not known until the
    model is built: then the backbone's own check at build time is the guard).
    """
    lines = lines or {}
    emb, bb = recipe.embedder.config, recipe.backbone.config
    expected = getattr(emb, "expected_dim", None)
    dim = expected() if callable(expected) else None
    if dim is None:
        return []
    named = (f"the embedder '{recipe.embedder.name}' (embedder.name, "
             f"{_where(source, lines, ('embedder', 'name'), overridden)})")
    errors = []
    latent = getattr(bb, "latent_dim", None)
    if isinstance(latent, int) and latent != dim:
        where = _where(source, lines, ("backbone", "latent_dim"), overridden)
        errors.append(f"{where}: backbone.latent_dim is {latent}, but {named} produces {dim}-d "
                      f"latents. Remove backbone.latent_dim (it is filled in from the embedder) or set it to {dim}.")
    hidden = getattr(bb, "decoder_hidden", None)
    if getattr(emb, "tie_unembedding", False) and isinstance(hidden, int) and hidden != dim:
        where = _where(source, lines, ("backbone", "decoder_hidden"), overridden)
        errors.append(f"{where}: backbone.decoder_hidden is {hidden}, but {named} ties its {dim}-d table to the "
                      f"unembedding (embedder.tie_unembedding), which needs them equal. Set "
                      f"backbone.decoder_hidden: {dim} or embedder.tie_unembedding: false.")
    return errors


def validate_recipe(data: dict[str, Any], *, source: str = "<recipe>", lines: dict[Loc, int] | None = None,
                    registry: Registry | None = None, overridden: Overridden | None = None) -> Recipe:
    """Schema → registry → component configs → dimensions. Raises RecipeError with every problem found.

    ``overridden`` (from :func:`override_locations`) makes errors at those keys name the ``--set``
    item instead of a line of the file.
    """
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        raise RecipeError(_format_errors(exc, source, lines or {}, (), Recipe, overridden)) from None
    return resolve(recipe, registry or default_registry(), source, lines, overridden)


def resolve_plugin_paths(entries: Any, recipe_path: Path, lines: dict[Loc, int] | None = None) -> list[Path]:
    """A recipe's ``plugins:`` entries as absolute paths of existing files, before any of them runs.

    A relative entry is relative to the recipe's folder and must stay inside it (after resolving
    ``..`` and symbolic links), so a recipe someone hands you cannot run a file from elsewhere on
    the machine; an absolute entry is taken as written, a deliberate choice of its author.
    """
    recipe_path = Path(recipe_path)
    lines = lines or {}
    if entries is None:
        return []
    if not isinstance(entries, list) or not all(isinstance(e, str) and e.strip() for e in entries):
        line = _nearest_line(lines, ("plugins",))
        raise RecipeError(f"{recipe_path}:{line or 1}: plugins: expected a list of plugin file paths "
                          f"(e.g. plugins: [my_sampler.py]), got {entries!r}")
    folder = recipe_path.resolve().parent
    out: list[Path] = []
    for i, entry in enumerate(entries):
        where = f"{recipe_path}:{_nearest_line(lines, ('plugins', i)) or 1}"
        given = Path(entry).expanduser()
        path = given.resolve() if given.is_absolute() else (folder / given).resolve()
        if not given.is_absolute() and not path.is_relative_to(folder):
            raise RecipeError(f"{where}: plugins: '{entry}' resolves to {path}, outside the recipe's folder "
                              f"{folder}. Relative plugin paths may not leave it; move the plugin beside the "
                              "recipe, or write its absolute path if you mean to run that file. Nothing was run.")
        if not path.is_file():
            raise RecipeError(f"{where}: plugins: file not found: {path} (relative paths are relative to "
                              "the recipe's folder)")
        out.append(path)
    return out


def load_recipe(path: str | Path, overrides: Sequence[str] = (), *, registry: Registry | None = None,
                extra_plugins: Sequence[str | Path] = ()) -> Recipe:
    """Read, override, validate. One-file plugins named in the recipe are loaded first."""
    path = Path(path)
    data, lines = read_yaml(path)
    data = apply_overrides(data, overrides)
    gone = missing_sources(data.get("provenance") or [])
    if gone:
        raise RecipeError("\n".join(f"{path}: provenance: {g}" for g in gone))
    overridden = override_locations(overrides)
    # a location an override replaced no longer comes from its line in the file
    lines = {loc: n for loc, n in lines.items() if not any(loc[:len(o)] == o for o in overridden)}
    plugin_files = [str(p) for p in resolve_plugin_paths(data.get("plugins"), path, lines)]
    if registry is None:
        registry = default_registry([*extra_plugins, *plugin_files])
    recipe_data = dict(data)
    recipe_data["plugins"] = plugin_files
    return validate_recipe(recipe_data, source=str(path), lines=lines, registry=registry, overridden=overridden)


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
