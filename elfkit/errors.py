"""User-facing errors.

Every error a user can cause (bad recipe, missing data, unreachable hub, corrupt
checkpoint, missing optional dependency) is an :class:`ElfkitError`. The CLI prints
these as a short red panel instead of a traceback; anything else is a bug.
"""

from __future__ import annotations


class ElfkitError(Exception):
    """Base class: the message must say what is wrong and how to fix it."""


class RecipeError(ElfkitError):
    """A recipe file or override is invalid (unknown key, wrong type, out of range)."""


class RegistryError(ElfkitError):
    """Unknown component name, duplicate registration, or a broken plugin."""


class DataError(ElfkitError):
    """Missing, empty or unreadable data."""


class CheckpointError(ElfkitError):
    """A checkpoint is missing, unreadable or does not match the model."""


class HubUnreachableError(ElfkitError):
    """A hub dataset or model could not be fetched (offline machine, wrong id)."""


class MissingDependencyError(ElfkitError):
    """An optional dependency is not installed; the message names the extra."""


class ExportError(ElfkitError):
    """An export failed or its parity check exceeded the threshold."""


class StorageError(ElfkitError):
    """A file could not be written: disk full, read-only or unwritable folder (nothing good was overwritten)."""


class DistributedSetupError(ElfkitError):
    """The torchrun environment cannot form a process group (e.g. an address that does not resolve)."""


class RunDirBusyError(ElfkitError):
    """Another elfkit process holds the run directory's lock."""
