"""The run directory: where every stage reads and writes, and which stages are done.

A person can read it: ``recipe.yaml`` (resolved), ``checkpoints/`` (laid out by
:class:`~elfkit.pipeline.checkpoint.CheckpointDir`), ``train_log.jsonl``,
``references.jsonl``, ``samples.jsonl``, ``metrics.json``, ``report.md`` and its plots.
``stages.json`` records each finished stage with the fingerprint of the settings it used,
so a rerun skips finished stages and redoes only those whose settings changed.

One process writes a run directory at a time: :meth:`RunDir.lock` holds ``.lock`` (pid, host,
process start time) for the whole command, refuses a second writer with a message naming the
holder, takes over a lock whose process is gone, and removes temp files of interrupted writes.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from elfkit.errors import RecipeError, RunDirBusyError
from elfkit.fileio import atomic_write_text, ensure_writable_dir, storage_error
from elfkit.pipeline.checkpoint import CheckpointDir, remove_temp_files
from elfkit.recipe.load import dump_yaml, resolved_dict
from elfkit.recipe.schema import Recipe

# recipe sections that do not change what training produces
NON_TRAINING_KEYS = ("name", "description", "sample", "eval", "sweep", "plugins", "provenance")


LOCK = ".lock"
_HELD: dict[Path, int] = {}   # run directories this process holds → nesting depth (run → train → sample)


def fingerprint(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def training_fingerprint(resolved: dict[str, Any]) -> str:
    return fingerprint({k: v for k, v in resolved.items() if k not in NON_TRAINING_KEYS})


@dataclass(frozen=True)
class RunDir:
    root: Path

    @property
    def recipe(self) -> Path:
        return self.root / "recipe.yaml"

    @property
    def checkpoints(self) -> CheckpointDir:
        return CheckpointDir(self.root / "checkpoints")

    @property
    def train_log(self) -> Path:
        return self.root / "train_log.jsonl"

    @property
    def samples(self) -> Path:
        return self.root / "samples.jsonl"

    @property
    def references(self) -> Path:
        return self.root / "references.jsonl"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.json"

    @property
    def report(self) -> Path:
        return self.root / "report.md"

    @property
    def stages_file(self) -> Path:
        return self.root / "stages.json"

    @property
    def lock_file(self) -> Path:
        return self.root / LOCK

    @contextmanager
    def lock(self, command: str) -> Iterator[None]:
        """Hold the run directory for ``command`` (re-entrant in one process; ranks > 0 of a torchrun
        job rely on rank 0's). On entry: the directory is created and proven writable, a live
        holder is refused (:class:`RunDirBusyError`), and interrupted writes' temp files are removed.
        Inside: a disk-full or permission ``OSError`` from any write becomes a :class:`StorageError`."""
        key = self.root.resolve()
        if key in _HELD or int(os.environ.get("RANK", "0")) != 0:
            _HELD[key] = _HELD.get(key, 0) + 1
            try:
                yield
            finally:
                _HELD[key] -= 1
                if not _HELD[key]:
                    del _HELD[key]
            return
        ensure_writable_dir(self.root)
        _acquire(self.lock_file, command)
        _HELD[key] = 1
        try:
            for folder in (self.root, self.checkpoints.path):
                remove_temp_files(folder)
            yield
        except OSError as exc:   # any write of the command (logs, samples, …): disk full / unwritable
            target = Path(exc.filename) if isinstance(exc.filename, str) else self.root
            err = storage_error(exc, target, target.parent if target != self.root else self.root)
            if err is None:
                raise
            raise err from None
        finally:
            del _HELD[key]
            _release(self.lock_file)

    def trim_train_log(self, step: int) -> None:
        """Drop ``train_log.jsonl`` records past ``step``: a resumed run logs those steps again."""
        path = self.train_log
        if not path.is_file():
            return
        text = path.read_text(encoding="utf-8")
        lines = text.splitlines()
        kept = [line for line in lines if 0 <= _log_step(line) <= step]   # also drops a line cut short
        if kept != lines or (text and not text.endswith("\n")):
            atomic_write_text(path, "".join(line + "\n" for line in kept))

    def write_recipe(self, recipe: Recipe) -> dict[str, Any]:
        """Write the resolved ``recipe.yaml`` (left untouched when it already says the same); returns the dict."""
        resolved = resolved_dict(recipe)
        text = dump_yaml(resolved)
        if not self.recipe.is_file() or self.recipe.read_text(encoding="utf-8") != text:
            self.root.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.recipe, text)
        return resolved

    def stages(self) -> dict[str, Any]:
        if not self.stages_file.exists():
            return {}
        try:
            return json.loads(self.stages_file.read_text())
        except json.JSONDecodeError:
            return {}

    def is_done(self, stage: str, fp: str) -> bool:
        return self.stages().get(stage, {}).get("fingerprint") == fp

    def mark_done(self, stage: str, fp: str, **info: Any) -> None:
        stages = self.stages()
        stages[stage] = {"fingerprint": fp, **info}
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.stages_file, json.dumps(stages, indent=2))

    def forget(self, *stage_names: str) -> None:
        stages = self.stages()
        for s in stage_names:
            stages.pop(s, None)
        if self.stages_file.exists():
            atomic_write_text(self.stages_file, json.dumps(stages, indent=2))

    def check_same_training(self, resolved: dict[str, Any]) -> None:
        """Refuse to resume a run directory made by a recipe with other training settings."""
        old = self.stages().get("train-started", {}).get("fingerprint")
        if old and old != training_fingerprint(resolved) and self.checkpoints.has_any():
            raise RecipeError(
                f"run directory {self.root} holds a run trained with different settings "
                f"(recipe.yaml there differs from this recipe outside sample/eval). Use --out to pick "
                f"another directory, or delete {self.root} to start over.")


def _log_step(line: str) -> int:
    """A log line's step (0 without one; -1 for a line a crash cut short)."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return -1
    step = record.get("step", 0) if isinstance(record, dict) else 0
    return step if isinstance(step, int) else 0


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), to tell a reused pid apart."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(holder: dict[str, Any]) -> bool:
    pid = holder.get("pid")
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    started = holder.get("started")
    return started is None or _start_time(pid) in (None, started)


def _acquire(path: Path, command: str) -> None:
    me = {"pid": os.getpid(), "host": socket.gethostname(), "started": _start_time(os.getpid()),
          "command": command, "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    for _ in range(3):
        try:
            tmp.write_text(json.dumps(me))
            try:
                os.link(tmp, path)   # atomic, fails if a lock exists, and the lock is never half-written
                return
            except FileExistsError:
                pass
        except OSError as exc:
            raise (storage_error(exc, path) or exc) from None
        finally:
            tmp.unlink(missing_ok=True)
        try:
            holder = json.loads(path.read_text())
        except (OSError, ValueError):
            holder = {}
        if not isinstance(holder, dict):
            holder = {}
        if holder.get("host") == me["host"] and not _alive(holder):
            path.unlink(missing_ok=True)   # its process is gone (killed): take over
            continue
        raise RunDirBusyError(
            f"{path.parent} is in use by another elfkit process (pid {holder.get('pid', '?')} on "
            f"{holder.get('host', '?')}, '{holder.get('command', '?')}' since {holder.get('since', '?')}). "
            f"Wait for it to finish or pick another --out. If no such process runs, delete {path}.")
    raise RunDirBusyError(f"could not take the lock {path}; another process keeps creating it")


def _release(path: Path) -> None:
    try:
        holder = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    if isinstance(holder, dict) and holder.get("pid") == os.getpid():
        path.unlink(missing_ok=True)
