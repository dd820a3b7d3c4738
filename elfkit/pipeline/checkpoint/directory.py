"""The ``checkpoints/`` folder of a run, and finding the checkpoint a path means.

Layout: ``step_{N}.safetensors`` files (the newest ``keep`` are kept) and ``last``, a small
JSON pointer naming the newest one (written after it, atomically; never a link, so damage
to one file never reaches another). Temp files of an interrupted write start with ``.`` and
end in ``.tmp``; :meth:`CheckpointDir.clean_temp` removes them.

What the trainer resumes from (:meth:`CheckpointDir.latest`): the file ``last`` names; when
``last`` is missing, the newest step file that verifies (with a note saying so), never step 0
while a step file exists. A damaged checkpoint is an error naming the newest intact one and
``--resume-from``; elfkit never silently falls back past a file it was told to use.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from elfkit.errors import CheckpointError
from elfkit.pipeline.checkpoint.record import SUFFIX, Checkpoint, LegacyCheckpointError, pointer_target, write_pointer

LAST = "last"
_STEP_FILE = re.compile(rf"^step_(\d+){re.escape(SUFFIX)}$")
_LEGACY_FILE = re.compile(r"^(step_\d+|last)\.pt$")


@dataclass(frozen=True)
class Resume:
    """A checkpoint to resume from, its file, and a note for the user when it was not ``last``'s."""

    checkpoint: Checkpoint
    path: Path
    note: str | None = None


@dataclass(frozen=True)
class CheckpointDir:
    """``step_{N}.safetensors`` files plus the ``last`` pointer. Writers must hold the run's lock."""

    path: Path

    @property
    def last(self) -> Path:
        return self.path / LAST

    def step_file(self, step: int) -> Path:
        return self.path / f"step_{step}{SUFFIX}"

    def steps(self) -> list[tuple[int, Path]]:
        """Step files on disk, oldest first (intact or not)."""
        if not self.path.is_dir():
            return []
        return sorted((int(m.group(1)), p) for p in self.path.iterdir() if (m := _STEP_FILE.match(p.name)))

    def has_any(self) -> bool:
        return self.last.exists() or bool(self.steps()) or bool(self.legacy_files())

    def legacy_files(self) -> list[Path]:
        if not self.path.is_dir():
            return []
        return sorted(p for p in self.path.iterdir() if _LEGACY_FILE.match(p.name))

    def write(self, checkpoint: Checkpoint, keep: int) -> Path:
        """Write ``step_{N}``, then point ``last`` at it, then prune older step files; returns the step file.

        Step files newer than N (left by a run resumed with ``--resume-from`` an older one) are
        never pruned: they are replaced only when training reaches their step."""
        path = self.step_file(checkpoint.step)
        checkpoint.save(path)
        write_pointer(self.last, path, checkpoint.step)
        older = [p for s, p in self.steps() if s < checkpoint.step]
        for old in older[:max(len(older) - (keep - 1), 0)]:
            old.unlink(missing_ok=True)
        return path

    def pointed(self) -> Path | None:
        """The file ``last`` names (None if ``last`` is missing or unreadable)."""
        return pointer_target(self.last)

    def newest_intact(self, *, skip: Path | None = None) -> tuple[Path, Checkpoint] | None:
        """The newest step file that reads and verifies (``skip`` excluded), or None."""
        for _, p in reversed(self.steps()):
            if skip is not None and p == skip:
                continue
            try:
                return p, Checkpoint.load(p)
            except CheckpointError:
                continue
        return None

    def damaged(self, path: Path, error: CheckpointError) -> CheckpointError:
        """``error`` plus which checkpoint to use instead (or that none is left)."""
        found = self.newest_intact(skip=path)
        if found is None:
            hint = (f"No intact checkpoint is left in {self.path}; delete the run directory "
                    f"(or use another --out) to start over.")
        else:
            hint = (f"The newest intact checkpoint is {found[0]} (step {found[1].step}): resume from it with "
                    f"--resume-from {found[0]}, or pass it to sample/export.")
        return CheckpointError(f"{error}\n{hint}")

    def latest(self, resume_from: Path | None = None) -> Resume | None:
        """What training resumes from (see the module docstring); None when nothing was saved yet."""
        if resume_from is not None:
            path = Path(resume_from)
            return Resume(load_checkpoint(path), path, f"resuming from {path} (--resume-from)")
        if not self.steps() and not self.last.exists() and (legacy := self.legacy_files()):
            raise LegacyCheckpointError(
                f"{self.path} holds checkpoints in the old pickle format ({', '.join(p.name for p in legacy)}), "
                f"which elfkit no longer opens because reading a pickle can run code. Convert the newest once "
                f"with:\n  elfkit checkpoint convert {legacy[-1]}\nthen rerun to resume.")
        target = self.pointed()
        if target is not None:
            try:
                return Resume(Checkpoint.load(target), target)
            except CheckpointError as exc:
                raise self.damaged(target, exc) from None
        if not self.steps():
            return None
        found = self.newest_intact()
        if found is None:
            raise CheckpointError(f"{self.path}: none of the step files ({', '.join(p.name for _, p in self.steps())}) "
                                  "is intact (each fails its checksum); delete the run directory to start over.")
        why = "missing" if not self.last.exists() else "unreadable"
        return Resume(found[1], found[0], f"{self.last} is {why}; resuming from the newest intact "
                                          f"checkpoint {found[0].name} (step {found[1].step})")

    def clean_temp(self) -> list[Path]:
        """Remove temp files left by interrupted writes (call while holding the run's lock)."""
        return remove_temp_files(self.path)


def remove_temp_files(folder: Path) -> list[Path]:
    """Delete ``.NAME.*.tmp`` files (what :func:`elfkit.fileio.atomic_write_bytes` writes) in ``folder``."""
    if not folder.is_dir():
        return []
    gone = [p for p in folder.iterdir() if p.name.startswith(".") and p.name.endswith(".tmp") and p.is_file()]
    for p in gone:
        p.unlink(missing_ok=True)
    return gone


def run_root_of(path: Path) -> Path:
    """The run directory a checkpoint path (step file, ``last``, ``checkpoints/`` or the run itself) belongs to."""
    path = Path(path).resolve()
    if path.is_dir():
        return path if (path / "checkpoints").is_dir() or path.name != "checkpoints" else path.parent
    return path.parent.parent


def load_checkpoint(path: Path) -> Checkpoint:
    """The checkpoint ``path`` means: a step file, the ``last`` pointer, a ``checkpoints/`` folder or a
    run directory (both: what ``last`` names). A damaged file is an error that names the newest
    intact checkpoint beside it."""
    path = Path(path)
    if path.is_dir():
        folder = path / "checkpoints" if (path / "checkpoints").is_dir() else path
        ckdir = CheckpointDir(folder)
        if not ckdir.has_any():
            raise CheckpointError(f"{path} holds no checkpoint; pass a run directory, its checkpoints/ "
                                  f"folder or a step_N{SUFFIX} file")
        found = ckdir.latest()
        if found is None:
            raise CheckpointError(f"{ckdir.last} names no checkpoint")
        return found.checkpoint
    ckdir = CheckpointDir(path.parent)
    if not path.exists() and path.suffix == ".pt" and ckdir.last.exists():
        raise CheckpointError(f"checkpoint not found: {path}; checkpoints are now step_N{SUFFIX} files and "
                              f"the pointer {ckdir.last} (pass that, or the run directory)")
    if path.name == LAST and path.is_file():
        target = pointer_target(path)
        if target is None:
            raise CheckpointError(f"{path} is not a readable checkpoint pointer; pass a step_N{SUFFIX} file")
        path = target
    try:
        return Checkpoint.load(path)
    except LegacyCheckpointError:
        raise
    except CheckpointError as exc:
        raise ckdir.damaged(path, exc) if path.exists() else exc from None
