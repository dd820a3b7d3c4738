"""``onnx``: the torch.export programs translated to ONNX and run with onnxruntime.

``torch.onnx.export(program, dynamo=True)`` keeps the shared ``batch``/``seq`` dims as
symbolic axes. Inputs and outputs are fp32; fp16/bf16 live inside the graph as explicit
casts (see :mod:`elfkit.components.exporters.trace`). bf16 is refused on CPU: onnxruntime's CPU
provider has no bf16 MatMul.
Needs the ``export`` extra: ``pip install "elfkit[export]"`` (onnx, onnxscript, onnxruntime).
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path
from typing import Any

import torch
from pydantic import Field
from torch import Tensor, nn

from elfkit.components.exporters.build import Built, export_artifact
from elfkit.components.exporters.manifest import capabilities_from, read_manifest
from elfkit.components.exporters.runner import ArtifactRunner
from elfkit.components.exporters.spec import DTYPES, DimRange, ExportSpec
from elfkit.components.exporters.trace import DECODE_INPUTS, DENOISE_INPUTS, TracedBackbone, quiet_torch_deprecations
from elfkit.components.targets import Target
from elfkit.config import ComponentConfig
from elfkit.errors import ExportError, MissingDependencyError

INSTALL = 'pip install "elfkit[export]"  (onnx, onnxscript, onnxruntime)'


class OnnxConfig(ComponentConfig):
    opset: int | None = Field(default=None, ge=18)
    """ONNX opset version; None = the torch exporter's default."""
    optimize: bool = True
    """Let the exporter run its graph optimisations (constant folding, fusion)."""
    threads: int | None = Field(default=None, ge=1)
    """onnxruntime intra-op threads; None = torch.get_num_threads()."""


def _require(module: str) -> Any:
    try:
        return __import__(module)
    except ImportError as exc:
        raise MissingDependencyError(f"the onnx exporter needs {module} ({exc}); install with: {INSTALL}") from None


def _providers(ort: Any, device: torch.device) -> list[str]:
    if device.type == "cpu":
        return ["CPUExecutionProvider"]
    if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    raise MissingDependencyError(f"onnxruntime here has no provider for {device} (available: "
                                 f"{', '.join(ort.get_available_providers())}); install onnxruntime-gpu for CUDA "
                                 "or load on cpu")


class OnnxExporter:
    """Exports both modes to ONNX (dynamic batch/seq axes); runs them with onnxruntime."""

    format = "onnx"

    def __init__(self, cfg: OnnxConfig) -> None:
        self.cfg = cfg

    def export(self, backbone: nn.Module, out_dir: Path, spec: ExportSpec, *, target: Target,
               metadata: dict[str, Any] | None = None) -> Path:
        if spec.precision == "bf16" and torch.device(spec.device or "cpu").type == "cpu":
            raise ExportError("onnx export at bf16 cannot be checked on cpu: onnxruntime's CPU provider has no "
                              "bf16 MatMul. Use --precision fp16 (runs on CPU) or fp32, --format torch-export for "
                              "bf16, or export on a CUDA machine (ExportSpec.device='cuda', onnxruntime-gpu)")
        for module in ("onnx", "onnxscript", "onnxruntime"):
            _require(module)
        return export_artifact(backbone, out_dir, spec, target=target, fmt=self.format, exporter_config=self.cfg,
                               default_device="cpu", build=self._build, open_runner=self.open, metadata=metadata)

    def _build(self, traced: TracedBackbone, out_dir: Path) -> Built:
        files: dict[str, str] = {}
        jobs = [("denoise", traced.denoise_program, DENOISE_INPUTS, "out", traced.denoise_dynamic_shapes()),
                ("decode", traced.decode_program, DECODE_INPUTS, "logits", traced.decode_dynamic_shapes())]
        for role, program, inputs, output, dynamic in jobs:
            if program is None:
                continue
            files[role] = f"{role}.onnx"
            path = out_dir / files[role]
            for old in (path, path.with_name(path.name + ".data")):
                old.unlink(missing_ok=True)
            noise = io.StringIO()
            try:  # the exporter prints progress lines and logs torchvision warnings; keep them out of the CLI
                with contextlib.redirect_stdout(noise), _quiet_loggers("torch.onnx", "onnxscript"), \
                        quiet_torch_deprecations(), warnings.catch_warnings():
                    # dims shared across inputs keep the first name; the exporter says so for each
                    warnings.filterwarnings("ignore", message=r"# The axis name", category=UserWarning)
                    onnx_program = torch.onnx.export(
                        program, (), dynamo=True, dynamic_shapes=dynamic, input_names=list(inputs),
                        output_names=[output], opset_version=self.cfg.opset, optimize=self.cfg.optimize,
                        verbose=False)
                    if onnx_program is None:   # dynamo=True always returns a program
                        raise ExportError("torch.onnx.export returned no program")
                    onnx_program.save(str(path))
            except Exception as exc:
                raise ExportError(f"ONNX translation of the {role} module failed: {type(exc).__name__}: "
                                  f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}") from exc
            data = path.with_name(path.name + ".data")  # weights > 2 GB go to an external file
            if data.exists():
                files[f"{role}_data"] = data.name
        return Built(files)

    def load(self, artifact_dir: Path, device: torch.device | str = "cpu") -> ArtifactRunner:
        manifest = read_manifest(artifact_dir)
        if manifest["format"] != self.format:
            raise ExportError(f"{artifact_dir} holds a {manifest['format']!r} export, not {self.format!r}")
        return self.open(Path(artifact_dir), manifest, torch.device(device))

    def open(self, artifact_dir: Path, manifest: dict[str, Any], device: torch.device) -> ArtifactRunner:
        ort = _require("onnxruntime")
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.cfg.threads or torch.get_num_threads()
        options.log_severity_level = 3
        providers = _providers(ort, device)
        files = manifest["files"]

        def session(role: str, names: tuple[str, ...]) -> Any:
            if role not in files:
                return None
            try:
                sess = ort.InferenceSession(str(artifact_dir / files[role]), options, providers=providers)
            except Exception as exc:  # onnxruntime raises its own exception types
                raise ExportError(f"onnxruntime cannot load {artifact_dir / files[role]} on {device}: {exc}") from exc
            return _session_fn(sess, names)

        shapes = manifest["shapes"]
        return ArtifactRunner(capabilities_from(manifest), session("denoise", DENOISE_INPUTS),
                              session("decode", DECODE_INPUTS), dtype=DTYPES[manifest["io_dtype"]], device="cpu",
                              batch=DimRange(**shapes["batch"]), seq=DimRange(**shapes["seq"]),
                              name=f"onnx artifact {artifact_dir}")


def _session_fn(sess: Any, names: tuple[str, ...]) -> Any:
    """Positional tensors → onnxruntime feeds (by the exported input names) → torch tensor."""
    wanted = [i.name for i in sess.get_inputs()]

    def fn(*args: Tensor) -> Tensor:
        feeds = {n: a.detach().cpu().numpy() for n, a in zip(names, args, strict=True) if n in wanted}
        return torch.from_numpy(sess.run(None, feeds)[0])
    return fn


@contextlib.contextmanager
def _quiet_loggers(*names: str):
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, lv in zip(loggers, levels, strict=True):
            lg.setLevel(lv)
