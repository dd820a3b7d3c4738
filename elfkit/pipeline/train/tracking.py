"""Experiment trackers beside ``train_log.jsonl``: TensorBoard event files and offline W&B.

Both are optional installs (``pip install 'elfkit[tracking]'``) and write only inside the run
directory (``tensorboard/``, ``wandb/``), never to the network: W&B runs in offline mode and
can be uploaded later with ``wandb sync``. The JSON-lines log is the :class:`Monitor`'s own.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from elfkit.errors import MissingDependencyError

EXTRA = "pip install 'elfkit[tracking]'"


class Tracker(Protocol):
    def log(self, step: int, scalars: dict[str, float]) -> None: ...

    def close(self) -> None: ...


class TensorBoardTracker:
    """Scalars to ``<run>/tensorboard/`` (``tensorboard --logdir <run>/tensorboard``)."""

    def __init__(self, run_root: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter  # needs the `tensorboard` package
        self.path = run_root / "tensorboard"
        self._writer = SummaryWriter(log_dir=str(self.path))

    def log(self, step: int, scalars: dict[str, float]) -> None:
        for key, value in scalars.items():
            self._writer.add_scalar(key, value, global_step=step)

    def close(self) -> None:
        self._writer.close()


class WandbTracker:
    """An offline W&B run in ``<run>/wandb/`` with the resolved recipe as its config."""

    def __init__(self, run_root: Path, config: dict[str, Any]) -> None:
        wandb = importlib.import_module("wandb")   # optional: not a static import, so type checks pass without it
        os.environ["WANDB_MODE"] = "offline"   # never contact a server, even if logged in
        run_root.mkdir(parents=True, exist_ok=True)
        self._run = wandb.init(mode="offline", dir=str(run_root), project="elfkit",
                               name=str(config.get("name", run_root.name)), config=config)

    def log(self, step: int, scalars: dict[str, float]) -> None:
        self._run.log(scalars, step=step)

    def close(self) -> None:
        self._run.finish()


_MODULES = {"tensorboard": "tensorboard", "wandb": "wandb"}


def check_trackers(names: Sequence[str]) -> None:
    """Raise :class:`MissingDependencyError` naming the extra when a tracker's package is missing."""
    missing = [n for n in names if n in _MODULES and importlib.util.find_spec(_MODULES[n]) is None]
    if missing:
        raise MissingDependencyError(f"train.log_to asks for {', '.join(missing)}, which is not installed: "
                                     f"run `{EXTRA}` (or `pip install {' '.join(missing)}`), or remove it "
                                     "from train.log_to")


def open_trackers(names: Sequence[str], run_root: Path, config: dict[str, Any], *,
                  enabled: bool = True) -> list[Tracker]:
    """The trackers named in ``train.log_to`` besides 'jsonl' (none on ranks other than 0)."""
    check_trackers(names)
    if not enabled:
        return []
    trackers: list[Tracker] = []
    if "tensorboard" in names:
        trackers.append(TensorBoardTracker(Path(run_root)))
    if "wandb" in names:
        trackers.append(WandbTracker(Path(run_root), config))
    return trackers
