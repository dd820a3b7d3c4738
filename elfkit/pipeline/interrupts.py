"""SIGINT and SIGTERM in any stage: unwind cleanly, then say what was kept and how to go on.

The CLI installs :func:`install_handlers`: both signals raise :class:`Interrupted`, a
``KeyboardInterrupt``, so ``except Exception`` cannot swallow it while ``finally`` blocks and
atomic writes still clean up. (Training handles the signals itself, to finish the step and
checkpoint first; it reports the signal with :func:`note_signal` and stops with
:class:`Interrupted` too.) Each stage is wrapped in :func:`interruptible`, which records on
the way out which stage was running and what survived, as the stage itself describes it at
that moment (a checkpoint exists or not, samples were or were not written).
"""

from __future__ import annotations

import inspect
import signal
import threading
from collections.abc import Callable, Mapping
from functools import wraps
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])
Kept = Callable[[Mapping[str, Any]], str]
"""The stage's bound arguments → one sentence: what survives an interruption now, how to go on."""

_NAMES = {signal.SIGINT: "Ctrl-C (SIGINT)", signal.SIGTERM: "SIGTERM"}
_received: list[int] = []


class Interrupted(KeyboardInterrupt):
    """A stage was stopped by a signal; ``stage`` is the innermost one, ``kept`` what each left."""

    def __init__(self, signum: int = signal.SIGINT) -> None:
        super().__init__(signum)
        self.signum = int(signum)
        self.stage: str | None = None
        self.kept: list[str] = []

    @property
    def exit_code(self) -> int:
        """The shell's convention for death by signal: 128 + its number (130 for SIGINT, 143 for SIGTERM)."""
        return 128 + self.signum

    @property
    def signal_name(self) -> str:
        return _NAMES.get(signal.Signals(self.signum), signal.Signals(self.signum).name)

    def message(self) -> str:
        during = f" during {self.stage}" if self.stage else ""
        return " ".join([f"Interrupted by {self.signal_name}{during}.",
                         *(self.kept or ["Rerun the same command to continue (finished stages are skipped)."])])


def note_signal(signum: int) -> None:
    """Record a signal that a stage handles itself (training's clean stop)."""
    _received.append(int(signum))


def last_signal(default: int = signal.SIGINT) -> int:
    """The most recent signal noted or raised, for a stage that stopped because of it."""
    return _received[-1] if _received else default


def _raise(signum: int, frame: Any) -> None:
    note_signal(signum)
    raise Interrupted(signum)


def install_handlers() -> None:
    """SIGINT and SIGTERM raise :class:`Interrupted` (main thread only, where Python runs handlers)."""
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, _raise)


def interruptible(stage: str, kept: Kept) -> Callable[[F], F]:
    """Name the stage a function runs and how to describe what an interruption leaves behind."""
    def decorate(fn: F) -> F:
        sig = inspect.signature(fn)

        @wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except KeyboardInterrupt as exc:
                err = exc if isinstance(exc, Interrupted) else Interrupted(last_signal())
                if err.stage is None:
                    err.stage = stage
                bound = sig.bind(*args, **kwargs)
                bound.apply_defaults()
                try:
                    line = kept(bound.arguments)
                except Exception:   # describing what was kept must never hide the interruption itself
                    line = ""
                if line and line not in err.kept:
                    err.kept.append(line)
                if err is exc:
                    raise
                raise err from None
        return wrapper  # type: ignore[return-value]
    return decorate
