"""Turn what a user hands a conformance kit (class, factory, registry name, instance) into a builder."""

from __future__ import annotations

import copy
import inspect
import os
import traceback
import typing
from collections.abc import Callable
from typing import Any

import torch
from pydantic import BaseModel


class ConformanceError(AssertionError):
    """A component broke its kind's contract; the message names the check and what to fix."""


def fail(check: str, message: str) -> ConformanceError:
    return ConformanceError(f"[{check}] {message}")


def author_traceback(exc: BaseException) -> str:
    """The traceback of ``exc`` without the kit's own frames: where the component's code failed
    (an author's bare ``assert`` shows its source line here, not just ``AssertionError:``)."""
    kit = os.path.dirname(os.path.abspath(__file__))
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if not f.filename.startswith(kit)]
    lines = traceback.format_list(frames) + traceback.format_exception_only(type(exc), exc)
    return "Traceback (the component's own frames):\n" + "".join(lines).rstrip()


def raised(check: str, exc: BaseException, what: str = "") -> ConformanceError:
    """A :class:`ConformanceError` for an exception the component raised during ``check``."""
    return fail(check, f"{what or 'the component'} raised {type(exc).__name__}: {exc}\n{author_traceback(exc)}")


def _config_type(factory: Callable[..., Any]) -> type[BaseModel] | None:
    """The pydantic type of a factory's first parameter (``__init__(self, cfg: MyConfig)``)."""
    target = factory.__init__ if isinstance(factory, type) else factory
    try:
        params = [p for p in inspect.signature(target).parameters.values() if p.name != "self"]
    except (TypeError, ValueError):
        return None
    if not params:
        return None
    try:
        hints = typing.get_type_hints(target)
    except Exception:
        return None
    hint = hints.get(params[0].name)
    return hint if isinstance(hint, type) and issubclass(hint, BaseModel) else None


def builder(component: Any, config: BaseModel | dict[str, Any] | None, kind: str,
            is_instance: Callable[[Any], bool]) -> Callable[[], Any]:
    """A zero-argument callable that builds a fresh component each time.

    ``component`` may be a registry name (str), a class or factory taking the config, or an
    already-built instance (then every build returns that same instance).
    """
    if isinstance(component, str):
        from elfkit.registry import default_registry
        spec = default_registry().get(kind, component)
        cfg = config if isinstance(config, BaseModel) else spec.config(**(config or {}))
        return lambda: spec.factory(cfg)
    if not isinstance(component, type) and is_instance(component):
        if config is not None:
            raise TypeError("pass either a built component or a class/factory with a config, not both")
        return lambda: component
    if not callable(component):
        raise TypeError(f"expected a {kind} class, factory, registry name or instance; got {component!r}")
    if isinstance(config, BaseModel):
        return lambda: component(config)
    cfg_type = _config_type(component)
    if cfg_type is not None:
        cfg = cfg_type(**(config or {}))
        return lambda: component(cfg)
    if config:
        raise TypeError(f"cannot tell which config model {component!r} takes; pass a config instance")
    return lambda: component()


def snapshot(obj: Any) -> dict[str, Any]:
    """A deep copy of an object's attributes (``__dict__`` and ``__slots__``)."""
    state: dict[str, Any] = dict(getattr(obj, "__dict__", {}))
    for cls in type(obj).__mro__:
        for name in getattr(cls, "__slots__", ()):
            if hasattr(obj, name):
                state[name] = getattr(obj, name)
    try:
        return copy.deepcopy(state)
    except Exception:
        return dict(state)


def same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape
                and a.dtype == b.dtype and bool(torch.equal(a, b)))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    try:
        return bool(a == b)
    except Exception:
        return a is b


def check_unchanged(check: str, obj: Any, before: dict[str, Any]) -> None:
    after = snapshot(obj)
    changed = sorted(k for k in before.keys() | after.keys()
                     if k not in before or k not in after or not same(before[k], after[k]))
    if changed:
        raise fail(check, f"{type(obj).__name__} changed attribute(s) {changed} while running; components of "
                          "this kind must be stateless (keep per-run values in local variables)")
