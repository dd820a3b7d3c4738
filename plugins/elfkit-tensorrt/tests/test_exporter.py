"""The elfkit-tensorrt plugin: registration, the guarded import, compile settings, and (where
TensorRT and a GPU exist) a real export.

torch-tensorrt cannot be installed on elfkit's dev/CI machines, so most tests here check the
plugin's own code: what happens without TensorRT, and — with a recording test double in
place of ``torch_tensorrt`` — exactly which calls the exporter makes. The real-TensorRT
test is skipped elsewhere with the reason.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from elfkit.components.backbones import EagerRunner
from elfkit.components.exporters import ExportSpec, export_backbone, load_runner, parse_range, read_manifest
from elfkit.errors import MissingDependencyError
from elfkit.registry import build_registry
from tests.fixtures.exporting import TARGET, inputs, tiny_backbone

PLUGIN_DIR = Path(__file__).resolve().parents[1]
if importlib.util.find_spec("elfkit_tensorrt") is None:  # not pip-installed: use the source tree
    sys.path.insert(0, str(PLUGIN_DIR))
elfkit_tensorrt = importlib.import_module("elfkit_tensorrt")
trt_exporter = importlib.import_module("elfkit_tensorrt.exporter")

INSTALL = r'pip install "elfkit\[trt\]" ./plugins/elfkit-tensorrt'
SPEC = ExportSpec(batch=parse_range("1:3:6"), seq=parse_range("2:8:16"))


def trt_skip_reason() -> str | None:
    """Why real TensorRT tests cannot run here (None = they can).

    ``pytest.importorskip("torch_tensorrt")`` is not enough: without the TensorRT libraries
    the import raises a bare ``Exception``, which importorskip lets through as a failure.
    """
    try:
        return elfkit_tensorrt.unavailable_reason()
    except Exception as exc:  # noqa: BLE001 - a skip check must never error
        return f"{type(exc).__name__}: {exc}"


@pytest.fixture()
def registry():
    return build_registry(entry_points=False, extra_plugins=[elfkit_tensorrt])


@pytest.fixture()
def broken_torch_tensorrt(tmp_path, monkeypatch):
    """A ``torch_tensorrt`` that behaves like the real wheel without libnvinfer: prints, then
    raises a bare Exception (verified behaviour of torch-tensorrt 2.13, ecosystem.md §D.2)."""
    pkg = tmp_path / "fake_site" / "torch_tensorrt"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(textwrap.dedent("""
        import os
        print("import error when try to import package_name='tensorrt'")
        os.write(1, b"make sure tensorrt lib is in the LD_LIBRARY_PATH\\n")
        raise Exception("import error when try to import _TensorRTProxyModule, got error "
                        "Could not find libnvinfer.so.11")
    """))
    monkeypatch.syspath_prepend(str(pkg.parent))
    importlib.invalidate_caches()
    yield
    sys.modules.pop("torch_tensorrt", None)


# ----------------------------------------------------------------------------------------
# Without TensorRT
# ----------------------------------------------------------------------------------------
def test_plugin_registers_without_importing_torch_tensorrt(registry):
    assert "tensorrt" in registry.names("exporter") and not registry.problems
    spec = registry.get("exporter", "tensorrt")
    assert "elfkit_tensorrt" in spec.provider
    assert "torch_tensorrt" not in sys.modules


def test_bare_exception_on_import_becomes_missing_dependency(broken_torch_tensorrt, capfd):
    with pytest.raises(MissingDependencyError) as err:
        elfkit_tensorrt.require_torch_tensorrt()
    msg = str(err.value)
    assert "TensorRT libraries" in msg and "libnvinfer.so.11" in msg
    assert "pip install \"elfkit[trt]\" ./plugins/elfkit-tensorrt" in msg
    out, errs = capfd.readouterr()
    assert "LD_LIBRARY_PATH" not in out + errs and "package_name" not in out + errs   # noise swallowed
    assert "torch_tensorrt" not in sys.modules                                          # no half-import left
    assert elfkit_tensorrt.unavailable_reason()                                         # and skip checks see it


@pytest.mark.skipif(importlib.util.find_spec("torch_tensorrt") is not None, reason="torch_tensorrt is installed")
def test_format_tensorrt_without_torch_tensorrt_says_how_to_install(tmp_path, registry):
    with pytest.raises(MissingDependencyError, match=INSTALL) as err:
        export_backbone(tiny_backbone(), "tensorrt", tmp_path, SPEC, registry, target=TARGET)
    assert "torch-tensorrt (not installed)" in str(err.value)
    assert not (tmp_path / "manifest.json").exists()
    # the rest of elfkit is unaffected: the same registry still has the core formats, no plugin problems
    assert {"onnx", "torch-export", "tensorrt"} <= set(registry.names("exporter")) and not registry.problems


def test_config_rejects_settings_elfkit_owns():
    for key in ("enabled_precisions", "attn_bias_is_causal"):
        with pytest.raises(ValueError, match=key):
            elfkit_tensorrt.TensorRTConfig(compiler_options={key: True})


def test_compile_options_are_bidirectional_and_never_use_enabled_precisions():
    exp = elfkit_tensorrt.TensorRTExporter(elfkit_tensorrt.TensorRTConfig(optimization_level=4))
    graph = exp.compile_options(SPEC.model_copy(update={"precision": "fp16"}), autocast_in_trt=False)
    assert graph["attn_bias_is_causal"] is False and "enabled_precisions" not in graph
    assert "enable_autocast" not in graph and graph["optimization_level"] == 4 and graph["disable_tf32"] is True
    auto = exp.compile_options(SPEC.model_copy(update={"precision": "bf16"}), autocast_in_trt=True)
    assert auto["enable_autocast"] is True and auto["autocast_low_precision_type"] == torch.bfloat16
    assert auto["attn_bias_is_causal"] is False


# ----------------------------------------------------------------------------------------
# The exporter's calls, through a recording stand-in for torch_tensorrt (CPU)
# ----------------------------------------------------------------------------------------
class _RecordingTRT:
    """Implements the torch_tensorrt calls the exporter makes, with plain torch.export:
    ``dynamo.compile`` returns the program's module, ``save``/``load`` re-export and save."""

    __version__ = "0.0-test-double"

    def __init__(self) -> None:
        self.compiled: list[dict] = []
        self.saved: list[dict] = []
        outer = self

        class Input:
            def __init__(self, **kw) -> None:
                self.__dict__.update(kw)

        class dynamo:  # noqa: N801 - mirrors the module name
            @staticmethod
            def compile(program, **kw):
                outer.compiled.append(kw)
                return program.module()

        self.Input, self.dynamo = Input, dynamo

    def save(self, module, path, **kw):
        self.saved.append(kw)
        ep = torch.export.export(module, tuple(kw["arg_inputs"]), dynamic_shapes=kw["dynamic_shapes"])
        torch.export.save(ep, path)

    def load(self, path):
        return torch.export.load(path)


@pytest.fixture(scope="module")
def double_export(tmp_path_factory):
    """One export through the recording double (module-scoped: tracing costs seconds)."""
    fake, out = _RecordingTRT(), tmp_path_factory.mktemp("trt")
    registry = build_registry(entry_points=False, extra_plugins=[elfkit_tensorrt])
    bb = tiny_backbone()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(trt_exporter, "require_torch_tensorrt", lambda *a, **k: fake)
        mp.setattr(trt_exporter, "_check_device", lambda device: None)   # the double runs on CPU
        export_backbone(bb, "tensorrt", out, SPEC.model_copy(update={"device": "cpu"}), registry, target=TARGET)
        runner = load_runner(out, device="cpu", registry=registry)
    return fake, out, bb, runner


@pytest.mark.slow
def test_exporter_calls_torch_tensorrt_as_documented(double_export):
    fake, out, bb, runner = double_export
    denoise_call, decode_call = fake.compiled
    assert denoise_call["attn_bias_is_causal"] is False and "enabled_precisions" not in denoise_call
    z_in, t_in, sc_in, g_in = denoise_call["arg_inputs"]
    assert (z_in.min_shape, z_in.opt_shape, z_in.max_shape) == ((1, 2, 8), (3, 8, 8), (6, 16, 8))
    assert (t_in.name, t_in.min_shape, t_in.max_shape) == ("t", (1,), (6,))
    assert [i.name for i in decode_call["arg_inputs"]] == ["z", "guidance"]
    assert all(s["output_format"] == "exported_program" and s["retrace"] for s in fake.saved)
    assert fake.saved[0]["dynamic_shapes"][0][0].__name__ == "batch"   # shared dims, not one per input

    m = read_manifest(out)
    assert m["format"] == "tensorrt" and m["files"] == {"denoise": "denoise.trt.ep", "decode": "decode.trt.ep"}
    assert m["tensorrt"]["compile_options"]["attn_bias_is_causal"] == "False" and m["parity"]["passed"]
    z, t, sc, g = inputs(4, 10)
    with torch.no_grad():
        torch.testing.assert_close(runner.denoise(z, t, sc, g), EagerRunner(bb).denoise(z, t, sc, g))


@pytest.mark.slow
def test_loading_a_tensorrt_artifact_without_tensorrt_is_a_clear_error(double_export, registry):
    if trt_skip_reason() is None:
        pytest.skip("TensorRT is available here")
    with pytest.raises(MissingDependencyError, match="loading a TensorRT artifact"):
        load_runner(double_export[1], device="cuda", registry=registry)


# ----------------------------------------------------------------------------------------
# Real TensorRT (GPU machines with torch-tensorrt only)
# ----------------------------------------------------------------------------------------
@pytest.mark.trt
@pytest.mark.gpu
@pytest.mark.skipif(trt_skip_reason() is not None, reason=f"TensorRT unavailable: {trt_skip_reason()}")
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_real_tensorrt_export_round_trip(tmp_path, registry, precision):
    bb = tiny_backbone()
    export_backbone(bb, "tensorrt", tmp_path, SPEC.model_copy(update={"precision": precision}), registry, target=TARGET)
    m = read_manifest(tmp_path)
    assert m["parity"]["passed"] and m["versions"]["torch-tensorrt"]
    runner, eager = load_runner(tmp_path, device="cuda", registry=registry), EagerRunner(bb.cuda())
    z, t, sc, g = (x.cuda() for x in inputs(5, 13))
    tol = 1e-4 if precision == "fp32" else 2e-2
    with torch.no_grad():
        torch.testing.assert_close(runner.denoise(z, t, sc, g), eager.denoise(z, t, sc, g), atol=tol, rtol=tol)
