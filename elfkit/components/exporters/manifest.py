"""``manifest.json``: what an artifact folder holds and how to run it.

Written last by every exporter (only after parity passed), read first by
:func:`elfkit.components.exporters.runner.load_runner`. A folder without a manifest is not an artifact.
"""

from __future__ import annotations

import importlib.metadata
import json
import platform
from pathlib import Path
from typing import Any

import torch

from elfkit.errors import ExportError
from elfkit.fileio import atomic_write_text
from elfkit.records import ModelCapabilities

MANIFEST = "manifest.json"
MANIFEST_VERSION = 1
REQUIRED = ("manifest_version", "format", "files", "precision", "capabilities", "shapes")


def library_versions(extra: tuple[str, ...] = ()) -> dict[str, str | None]:
    """Versions that decide whether an artifact loads elsewhere (None = not installed)."""
    def version(dist: str) -> str | None:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return None
    out: dict[str, str | None] = {"python": platform.python_version(), "torch": torch.__version__,
                                  "elfkit": version("elfkit")}
    for dist in ("onnx", "onnxscript", "onnxruntime", "torch-tensorrt", "tensorrt", *extra):
        out[dist] = version(dist)
    out["cuda"] = torch.version.cuda
    return out


def write_manifest(artifact_dir: Path, manifest: dict[str, Any]) -> Path:
    missing = [k for k in REQUIRED if k not in manifest]
    if missing:
        raise ValueError(f"manifest lacks {missing}")
    path = Path(artifact_dir) / MANIFEST
    atomic_write_text(path, json.dumps(manifest, indent=2, sort_keys=False) + "\n")
    return path


def read_manifest(artifact_dir: Path) -> dict[str, Any]:
    """Read and sanity-check a manifest; every problem is an :class:`ExportError` naming the folder."""
    artifact_dir = Path(artifact_dir)
    if not artifact_dir.exists():
        raise ExportError(f"export folder not found: {artifact_dir}. Create one with "
                          "`elfkit export CHECKPOINT --format ... --out FOLDER`.")
    path = artifact_dir / MANIFEST if artifact_dir.is_dir() else artifact_dir
    if not path.exists():
        hint = " (a parity-failed export leaves no manifest; see parity-failed.json)" \
            if (path.parent / "parity-failed.json").exists() else ""
        raise ExportError(f"{path.parent} is not an elfkit export: no {MANIFEST}{hint}. "
                          "Create one with `elfkit export CHECKPOINT --format ...`.")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:   # ValueError: bad JSON or not UTF-8 text
        raise ExportError(f"cannot read {path}: {exc}") from None
    missing = [k for k in REQUIRED if k not in manifest]
    if missing:
        raise ExportError(f"{path} is incomplete: missing {missing}")
    if manifest["manifest_version"] > MANIFEST_VERSION:
        raise ExportError(f"{path} has manifest version {manifest['manifest_version']}; this elfkit reads up "
                          f"to {MANIFEST_VERSION}: upgrade elfkit")
    for role, name in manifest["files"].items():
        if not (path.parent / name).exists():
            raise ExportError(f"{path.parent}: the manifest lists {role} file {name!r}, which is missing")
    return manifest


def capabilities_from(manifest: dict[str, Any]) -> ModelCapabilities:
    return ModelCapabilities(**manifest["capabilities"])
