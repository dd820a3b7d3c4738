"""``torch-export``: the backbone's two modes as ``torch.export`` programs (``.pt2``).

Portable and exact: the saved ExportedProgram replays the same aten graph as eager, so
fp32 parity is bit-exact on the tracing device. With ``aot_inductor`` each program is
also compiled ahead of time into a self-contained package (C++ kernels, runnable from
C++ without Python), which the runner then uses; compiling takes tens of seconds per
module on a CPU (offline-resources.md §7).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from elfkit.components.exporters.build import Built, export_artifact
from elfkit.components.exporters.manifest import capabilities_from, read_manifest
from elfkit.components.exporters.runner import ArtifactRunner
from elfkit.components.exporters.spec import DTYPES, DimRange, ExportSpec
from elfkit.components.exporters.trace import TracedBackbone, quiet_torch_deprecations
from elfkit.components.targets import Target
from elfkit.config import ComponentConfig
from elfkit.errors import ExportError


class TorchExportConfig(ComponentConfig):
    aot_inductor: bool = False
    """Also compile AOTInductor packages (``*.aoti.pt2``) and run those; slow to build."""


def _load_program(path: Path, device: torch.device) -> Any:
    module = torch.export.load(str(path)).module()
    return module.to(device)


def _load_aoti(path: Path, device: torch.device, built_on: str) -> Any:
    if torch.device(built_on).type != device.type:
        raise ExportError(f"{path} is an AOTInductor package compiled for {built_on}; it cannot run on {device}. "
                          f"Re-export on {device.type} (ExportSpec.device) or load the portable .pt2 programs.")
    from torch._inductor import aoti_load_package
    return aoti_load_package(str(path))


class TorchExportExporter:
    """Exports with ``torch.export`` (+ optional AOTInductor); runs on any device torch runs on."""

    format = "torch-export"

    def __init__(self, cfg: TorchExportConfig) -> None:
        self.cfg = cfg

    def export(self, backbone: nn.Module, out_dir: Path, spec: ExportSpec, *, target: Target,
               metadata: dict[str, Any] | None = None) -> Path:
        return export_artifact(backbone, out_dir, spec, target=target, fmt=self.format, exporter_config=self.cfg,
                               default_device="cpu", build=self._build, open_runner=self.open, metadata=metadata)

    def _build(self, traced: TracedBackbone, out_dir: Path) -> Built:
        programs = {"denoise": traced.denoise_program, "decode": traced.decode_program}
        files: dict[str, str] = {}
        for role, program in programs.items():
            if program is None:
                continue
            files[role] = f"{role}.pt2"
            torch.export.save(program, str(out_dir / files[role]))
            if self.cfg.aot_inductor:
                files[f"{role}_aoti"] = f"{role}.aoti.pt2"
                (out_dir / files[f"{role}_aoti"]).unlink(missing_ok=True)
                try:
                    from torch._inductor import aoti_compile_and_package
                    with quiet_torch_deprecations():
                        aoti_compile_and_package(program, package_path=str(out_dir / files[f"{role}_aoti"]))
                except Exception as exc:  # inductor raises compiler errors of many kinds
                    raise ExportError(f"AOTInductor compilation of the {role} module failed: "
                                      f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}. "
                                      "It needs a working C++ compiler (gcc/clang); export without "
                                      "aot_inductor for the portable .pt2 programs.") from exc
        return Built(files, {"runtime": "aot_inductor" if self.cfg.aot_inductor else "exported_program"})

    def load(self, artifact_dir: Path, device: torch.device | str = "cpu") -> ArtifactRunner:
        manifest = read_manifest(artifact_dir)
        if manifest["format"] != self.format:
            raise ExportError(f"{artifact_dir} holds a {manifest['format']!r} export, not {self.format!r}")
        return self.open(Path(artifact_dir), manifest, torch.device(device))

    def open(self, artifact_dir: Path, manifest: dict[str, Any], device: torch.device,
             *, runtime: str | None = None) -> ArtifactRunner:
        """Runner over the files; ``runtime`` ('exported_program' | 'aot_inductor') overrides the manifest's."""
        runtime = runtime or manifest.get("runtime", "exported_program")
        files = manifest["files"]

        def fn(role: str) -> Any:
            if role not in files:
                return None
            if runtime == "aot_inductor":
                if f"{role}_aoti" not in files:
                    raise ExportError(f"{artifact_dir} has no AOTInductor package; export with aot_inductor=True")
                return _load_aoti(artifact_dir / files[f"{role}_aoti"], device, manifest["device"])
            return _load_program(artifact_dir / files[role], device)

        shapes = manifest["shapes"]
        return ArtifactRunner(capabilities_from(manifest), fn("denoise"), fn("decode"),
                              dtype=DTYPES[manifest["io_dtype"]], device=device,
                              batch=DimRange(**shapes["batch"]), seq=DimRange(**shapes["seq"]),
                              name=f"{self.format} artifact {artifact_dir}")
