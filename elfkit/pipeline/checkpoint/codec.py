"""Nested training state ↔ (JSON-able tree, flat tensor dict), and the checksum over both.

A checkpoint holds state dicts of models, optimisers and schedulers: nested dicts, lists and
tuples of tensors and plain numbers. Storing them without pickle means splitting them into a
JSON tree (with a ``{"__tensor__": key}`` marker where a tensor was) and a flat ``key → Tensor``
dict that safetensors writes. Only plain types cross: anything else is refused on save, so
nothing a checkpoint holds can run code when it is read back.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

import torch
from torch import Tensor

TENSOR, TUPLE, DICT, FLOAT = "__tensor__", "__tuple__", "__dict__", "__float__"
_MARKERS = (TENSOR, TUPLE, DICT, FLOAT)


def split(value: Any, tensors: dict[str, Tensor], prefix: str) -> Any:
    """``value`` as a JSON-able tree; its tensors go into ``tensors`` under keys starting with ``prefix``.

    Raises ``TypeError`` naming the key of any value that is not a tensor, a plain number,
    string, bool, None, or a dict/list/tuple of those."""
    if isinstance(value, Tensor):
        key = prefix
        tensors[key] = value.detach().to("cpu").contiguous()
        return {TENSOR: key}
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):   # JSON has no NaN/inf: spell them out
        return value if math.isfinite(value) else {FLOAT: repr(value)}
    if isinstance(value, (list, tuple)):
        items = [split(v, tensors, f"{prefix}.{i}") for i, v in enumerate(value)]
        return {TUPLE: items} if isinstance(value, tuple) else items
    if isinstance(value, dict):
        if all(isinstance(k, str) and k not in _MARKERS for k in value):
            return {k: split(v, tensors, f"{prefix}.{k}") for k, v in value.items()}
        if all(isinstance(k, (str, int)) and not isinstance(k, bool) for k in value):
            return {DICT: [[k, split(v, tensors, f"{prefix}.{k}")] for k, v in value.items()]}
    raise TypeError(f"{prefix}: a checkpoint stores tensors and plain values only, not {type(value).__name__}")


def join(tree: Any, tensors: dict[str, Tensor]) -> Any:
    """Inverse of :func:`split`; a marker naming a missing tensor is a ``KeyError``."""
    if isinstance(tree, list):
        return [join(v, tensors) for v in tree]
    if isinstance(tree, dict):
        if len(tree) == 1:
            (marker, inner), = tree.items()
            if marker == TENSOR:
                return tensors[inner]
            if marker == TUPLE:
                return tuple(join(v, tensors) for v in inner)
            if marker == DICT:
                return {k: join(v, tensors) for k, v in inner}
            if marker == FLOAT:
                return float(inner)
        return {k: join(v, tensors) for k, v in tree.items()}
    return tree


def canonical_json(tree: Any) -> str:
    return json.dumps(tree, sort_keys=True, separators=(",", ":"), allow_nan=False)


def checksum(meta_json: str, tensors: dict[str, Tensor]) -> str:
    """sha256 over the metadata text and every tensor's name, dtype, shape and bytes (sorted by name)."""
    h = hashlib.sha256(meta_json.encode("utf-8"))
    for key in sorted(tensors):
        t = tensors[key]
        h.update(f"\0{key}\0{t.dtype}\0{list(t.shape)}\0".encode())
        if t.numel():
            h.update(t.contiguous().view(-1).view(torch.uint8).numpy().data)
    return h.hexdigest()
