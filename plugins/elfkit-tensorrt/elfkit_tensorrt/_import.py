"""Importing torch_tensorrt safely: any failure becomes a :class:`MissingDependencyError`.

``import torch_tensorrt`` without the TensorRT libraries prints diagnostics to stdout
and raises a bare ``Exception`` ("... Could not find libnvinfer.so.11"), not an
ImportError; with a CPU build of torch it raises OSError (libtorch_cuda.so). So the import
happens only inside the exporter, with stdout/stderr captured at the file-descriptor
level and every exception converted into a message that names what is missing.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import io
import logging
import os
import sys
import tempfile
from collections.abc import Iterator
from types import ModuleType

import torch

from elfkit.components.exporters.runner import TENSORRT_INSTALL
from elfkit.errors import MissingDependencyError

log = logging.getLogger(__name__)


@contextlib.contextmanager
def _captured_output() -> Iterator[list[str]]:
    """Swallow Python- and C-level stdout/stderr; the captured text is appended to the yielded list."""
    sink: list[str] = []
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        saved = []
        for stream, fd in ((sys.stdout, 1), (sys.stderr, 2)):
            with contextlib.suppress(Exception):
                stream.flush()
            try:
                saved.append((fd, os.dup(fd)))
                os.dup2(tmp.fileno(), fd)
            except OSError:  # no real fd (embedded interpreters): Python-level capture below still works
                pass
        py_out, py_err = sys.stdout, sys.stderr
        buf = io.StringIO()
        sys.stdout = sys.stderr = buf
        try:
            yield sink
        finally:
            sys.stdout, sys.stderr = py_out, py_err
            for fd, dup in saved:
                os.dup2(dup, fd)
                os.close(dup)
            tmp.seek(0)
            sink.append(buf.getvalue() + tmp.read().decode("utf-8", "replace"))


def _cuda_problem() -> str | None:
    if torch.version.cuda is None:
        return f"a CUDA build of torch (this is {torch.__version__}, a CPU-only build)"
    if not torch.cuda.is_available():
        return f"a CUDA GPU (torch {torch.__version__} sees none: check the driver and CUDA_VISIBLE_DEVICES)"
    return None


def _missing(purpose: str, problems: list[str], detail: str = "") -> MissingDependencyError:
    lines = [f"{purpose} needs torch-tensorrt with the TensorRT libraries and a CUDA GPU; missing here:"]
    lines += [f"  - {p}" for p in problems]
    if detail:
        lines.append(f"  (import said: {detail})")
    lines.append(f"Install on a CUDA 13 machine: {TENSORRT_INSTALL}")
    lines.append("Without TensorRT, export with --format torch-export (optionally AOTInductor) or --format onnx.")
    return MissingDependencyError("\n".join(lines))


def require_torch_tensorrt(purpose: str = "the TensorRT exporter", *, need_cuda: bool = True) -> ModuleType:
    """Import and return ``torch_tensorrt``, or raise :class:`MissingDependencyError` saying why not."""
    problems: list[str] = []
    if importlib.util.find_spec("torch_tensorrt") is None:
        problems.append("torch-tensorrt (not installed)")
        if need_cuda and (cuda := _cuda_problem()):
            problems.append(cuda)
        raise _missing(purpose, problems)
    noise: list[str] = []
    try:
        with _captured_output() as noise:
            module = importlib.import_module("torch_tensorrt")
    except Exception as exc:  # bare Exception (no libnvinfer), OSError (CPU torch), ImportError...
        log.debug("import torch_tensorrt printed:\n%s", "".join(noise))
        # a half-imported package would make the next attempt fail differently: forget it
        for name in [n for n in sys.modules if n == "torch_tensorrt" or n.startswith("torch_tensorrt.")]:
            del sys.modules[name]
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "nvinfer" in first or "tensorrt" in first.lower():
            problems.append("the TensorRT libraries (libnvinfer; pip package tensorrt-cu13-libs from NVIDIA's index)")
        if cuda := _cuda_problem():
            problems.append(cuda)
        if not problems:
            problems.append("a working torch-tensorrt matching this torch's minor version")
        raise _missing(purpose, problems, f"{type(exc).__name__}: {first}") from None
    if need_cuda and (cuda := _cuda_problem()):
        raise _missing(purpose, [cuda])
    return module


def unavailable_reason() -> str | None:
    """None when TensorRT export can run here, else the reason (for skips and ``--help`` text)."""
    try:
        require_torch_tensorrt()
    except MissingDependencyError as exc:
        return str(exc).splitlines()[1].strip(" -") if len(str(exc).splitlines()) > 1 else str(exc)
    except Exception as exc:  # belt and braces: a skip check must never raise
        return f"{type(exc).__name__}: {exc}"
    return None
