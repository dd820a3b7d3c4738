"""Offline corpora read from installed packages (pythonbible wheels, Debian SWORD modules)."""
