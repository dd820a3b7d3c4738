"""Interruptions: the innermost stage and what each stage kept travel with the exception."""

from __future__ import annotations

import os
import signal

import pytest

from elfkit.pipeline import interrupts
from elfkit.pipeline.interrupts import Interrupted, interruptible


@interruptible("inner", lambda a: f"inner kept {a['x']}.")
def _inner(x: int, exc: BaseException) -> None:
    raise exc


@interruptible("outer", lambda a: "outer kept.")
def _outer(exc: BaseException, x: int = 7) -> None:
    _inner(x, exc)


def test_stages_name_the_innermost_and_add_what_each_kept():
    with pytest.raises(Interrupted) as e:
        _outer(Interrupted(signal.SIGTERM))
    err = e.value
    assert err.stage == "inner" and err.kept == ["inner kept 7.", "outer kept."]
    assert err.exit_code == 143
    assert err.message() == "Interrupted by SIGTERM during inner. inner kept 7. outer kept."


def test_a_plain_keyboard_interrupt_becomes_a_sigint_interruption(monkeypatch):
    monkeypatch.setattr(interrupts, "_received", [])
    with pytest.raises(Interrupted) as e:
        _outer(KeyboardInterrupt())
    assert e.value.signum == signal.SIGINT and e.value.exit_code == 130
    assert e.value.message().startswith("Interrupted by Ctrl-C (SIGINT) during inner.")


def test_other_errors_pass_through_untouched():
    with pytest.raises(ValueError):
        _outer(ValueError("bug"))


def test_a_failing_description_does_not_hide_the_interruption():
    @interruptible("s", lambda a: a["missing"])
    def f() -> None:
        raise Interrupted(signal.SIGINT)
    with pytest.raises(Interrupted) as e:
        f()
    assert e.value.stage == "s" and e.value.kept == []
    assert "Rerun the same command to continue" in e.value.message()


def test_installed_handlers_turn_sigterm_into_interrupted(monkeypatch):
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    monkeypatch.setattr(interrupts, "_received", [])
    try:
        interrupts.install_handlers()
        with pytest.raises(Interrupted) as e:
            os.kill(os.getpid(), signal.SIGTERM)   # the handler runs before the next bytecode
        assert e.value.signum == signal.SIGTERM
        assert interrupts.last_signal() == signal.SIGTERM
    finally:
        for s, h in saved.items():
            signal.signal(s, h)
