"""What a run shows and records: a rich progress bar on stderr and ``train_log.jsonl``.

Both exist on rank 0 only; other ranks get a no-op monitor. :func:`read_log` is the one
reader of the log (the tests and the report use it). Step records also go, as scalars, to the
experiment trackers the recipe asks for (:mod:`.tracking`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from elfkit.pipeline.rundir import RunDir
from elfkit.pipeline.train.tracking import Tracker


class Monitor:
    """Progress bar (step, loss, tokens/s, ETA) plus a JSON-lines metrics log."""

    def __init__(self, log_path: Path, total_steps: int, start_step: int, *, enabled: bool,
                 console: Console | None = None, trackers: list[Tracker] | None = None) -> None:
        self.enabled = enabled
        self.log_path = Path(log_path)
        self._progress: Progress | None = None
        self._trackers = trackers or []
        if not enabled:
            return
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        console = self._console = console or Console(stderr=True)
        self._progress = Progress(
            TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[tps]} tok/s"),
            TimeRemainingColumn(), console=console, transient=False)
        self._task = self._progress.add_task("train", total=total_steps, completed=start_step,
                                             loss="—", tps="—")
        self._progress.start()

    def update(self, step: int, loss: float | None, tokens_per_s: float | None) -> None:
        if self._progress is None:
            return
        self._progress.update(self._task, completed=step,
                              loss="—" if loss is None else f"{loss:.4f}",
                              tps="—" if tokens_per_s is None else f"{tokens_per_s:,.0f}")

    def log(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"time": round(time.time(), 3), **record}
        with self.log_path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        step = record.get("step")
        if self._trackers and isinstance(step, int):
            prefix = f"{record['event']}/" if "event" in record else "train/"
            scalars = {prefix + k: float(v) for k, v in record.items()
                       if k not in ("step", "time") and isinstance(v, int | float) and not isinstance(v, bool)}
            for tracker in self._trackers:
                tracker.log(step, scalars)

    def warn(self, message: str) -> None:
        """A warning on the console (above the progress bar)."""
        if self.enabled:
            self._console.print(f"warning: {message}", style="yellow", markup=False, highlight=False)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        for tracker in self._trackers:
            tracker.close()
        self._trackers = []


def read_log(run_dir: Path) -> list[dict[str, Any]]:
    """The records of the run directory's ``train_log.jsonl`` (empty if none); unreadable lines
    (a crash mid-write) are skipped."""
    path = RunDir(Path(run_dir)).train_log
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            out.append(record)
    return out
