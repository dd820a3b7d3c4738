"""Compatibility alias kept from elfkit 0.1: the contracts moved to :mod:`elfkit.contracts` and
the records to :mod:`elfkit.records`. New code imports from those; plugins written against 0.1
keep working."""

from elfkit import contracts as _contracts
from elfkit import records as _records
from elfkit.contracts import *  # noqa: F403
from elfkit.records import *  # noqa: F403

# Spelled with += so type checkers can follow the re-exported names.
__all__: list[str] = []
__all__ += _contracts.__all__
__all__ += _records.__all__
