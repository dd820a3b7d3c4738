"""elfkit: a framework for continuous text generators; ELF is the default recipe."""

from elfkit.contracts import Denoiser, Embedder, Sampler
from elfkit.hookspecs import hookimpl
from elfkit.records import ModelCapabilities, Prediction, SamplerOutput

__version__ = "0.1.0"

__all__ = [
    "Denoiser", "Embedder", "ModelCapabilities", "Prediction", "Sampler", "SamplerOutput",
    "hookimpl", "__version__",
]
