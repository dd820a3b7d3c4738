"""Training checkpoints: the record (:mod:`.record`, one safetensors file, checksummed), the
``checkpoints/`` folder (:mod:`.directory`) and the converter for old pickle files (:mod:`.legacy`).

Use :class:`Checkpoint` to build/save/load one file, :class:`CheckpointDir` to write into a
run and to find what to resume from, and :func:`load_checkpoint` for any path a person types.
"""

from elfkit.pipeline.checkpoint.directory import (
    LAST,
    CheckpointDir,
    Resume,
    load_checkpoint,
    remove_temp_files,
    run_root_of,
)
from elfkit.pipeline.checkpoint.record import FORMAT_VERSION, SUFFIX, Checkpoint, LegacyCheckpointError

__all__ = ["FORMAT_VERSION", "LAST", "SUFFIX", "Checkpoint", "CheckpointDir", "LegacyCheckpointError", "Resume",
           "load_checkpoint", "remove_temp_files", "run_root_of"]
