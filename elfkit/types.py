"""Compatibility alias kept from elfkit 0.1: the contracts moved to :mod:`elfkit.contracts` and
the records to :mod:`elfkit.records`. New code imports from those; plugins written against 0.1
keep working."""

from elfkit.contracts import *  # noqa: F403
from elfkit.contracts import __all__ as _contracts
from elfkit.records import *  # noqa: F403
from elfkit.records import __all__ as _records

__all__ = [*_contracts, *_records]
