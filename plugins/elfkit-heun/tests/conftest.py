"""Make ``elfkit_heun`` importable when the plugin is not installed (e.g. pytest run from the repo root)."""

import importlib.util
import sys
from pathlib import Path

if importlib.util.find_spec("elfkit_heun") is None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
