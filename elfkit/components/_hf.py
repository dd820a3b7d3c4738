"""Small shared helpers around Hugging Face libraries."""

from __future__ import annotations


def quiet_transformers() -> None:
    """Silence transformers' per-load progress bars and info logs: elfkit shows its own progress."""
    try:
        from transformers.utils import logging as tf_logging
    except ImportError:  # pragma: no cover - transformers is an optional extra
        return
    tf_logging.disable_progress_bar()
    tf_logging.set_verbosity_error()
