"""Training: ``fit`` (single process or torchrun DDP/FSDP2), checkpoints and resume."""

from elfkit.pipeline.train.loop import TrainResult, fit, micro_seed
from elfkit.pipeline.train.monitor import read_log

__all__ = ["TrainResult", "fit", "micro_seed", "read_log"]
