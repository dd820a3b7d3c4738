"""torch-export and ONNX exports of a tiny ELF backbone: round trips, parity refusal, sampling.

Artifacts are exported once per module (a few seconds each on 2 cores); every test that exports
or loads an artifact is marked slow (the AOTInductor one compiles C++), so ``-m "not slow"`` keeps
the spec, parity-metric and error-message tests only.
"""

from __future__ import annotations

import json
import math
import types

import pytest
import torch

from elfkit.components.backbones import EagerRunner
from elfkit.components.exporters import (
    DimRange,
    ExportSpec,
    ParityThresholds,
    TorchExportConfig,
    TorchExportExporter,
    compare,
    export_backbone,
    load_runner,
    parse_range,
    read_manifest,
)
from elfkit.components.exporters.parity import Metrics, parity_shapes, violations
from elfkit.components.exporters.trace import trace_backbone
from elfkit.components.targets import TargetConfig, XTarget
from elfkit.core.flow import FlowPath
from elfkit.errors import ExportError, MissingDependencyError, RegistryError
from elfkit.generation import generate
from elfkit.hookspecs import hookimpl
from elfkit.registry import build_registry
from tests.fixtures.exporting import MAX_LEN, SPEC, TARGET, D, V, inputs, tiny_backbone
from tests.fixtures.optional import requires_wheel

ONNX = requires_wheel("onnx", "onnxscript", "onnxruntime")


@pytest.fixture(scope="module")
def registry():
    return build_registry(entry_points=False)


@pytest.fixture(scope="module")
def backbone():
    return tiny_backbone()


@pytest.fixture(scope="module")
def torch_export_dir(tmp_path_factory, backbone, registry):
    out = tmp_path_factory.mktemp("te")
    export_backbone(backbone, "torch-export", out, SPEC, registry, target=TARGET, metadata={"backbone": "elf"})
    return out


@pytest.fixture(scope="module")
def onnx_dir(tmp_path_factory, backbone, registry):
    out = tmp_path_factory.mktemp("onnx")
    export_backbone(backbone, "onnx", out, SPEC, registry, target=TARGET)
    return out


# ----------------------------------------------------------------------------------------
# Spec parsing and metrics
# ----------------------------------------------------------------------------------------
def test_parse_range_accepts_min_opt_max_and_static():
    assert parse_range("1:8:64") == DimRange(min=1, opt=8, max=64)
    assert parse_range("32") == DimRange(min=32, opt=32, max=32)


@pytest.mark.parametrize("bad", ["8:4:2", "a:b:c", "1:2", "0:1:2", ""])
def test_parse_range_rejects_malformed(bad):
    with pytest.raises(ExportError, match="MIN:OPT:MAX|invalid range"):
        parse_range(bad, "--batch")


def test_example_size_is_strictly_inside_and_at_least_two():
    assert DimRange(min=1, opt=1, max=64).example() == 2
    assert DimRange(min=2, opt=16, max=16).example() == 15
    assert DimRange(min=4, opt=8, max=64).example() == 8
    assert DimRange(min=5, opt=5, max=5).example() == 5


def test_seq_range_defaults_from_and_is_capped_by_max_length():
    assert ExportSpec().seq_range(128) == DimRange(min=2, opt=64, max=128)
    with pytest.raises(ExportError, match="max_length 16"):
        ExportSpec(seq=parse_range("2:8:32")).seq_range(16)


def test_spec_carries_no_model_settings():
    """Target and flow path come from the caller's bound target, not from the spec (one source)."""
    assert not {"target", "noise_scale", "t_eps", "t_min"} & set(ExportSpec.model_fields)


def test_parity_shapes_cover_min_opt_max_and_an_odd_length():
    assert parity_shapes(parse_range("1:3:6"), parse_range("2:8:16")) == [(1, 2), (3, 8), (6, 16), (3, 9)]
    assert parity_shapes(parse_range("1:8:8"), parse_range("2:64:64")) == [(1, 2), (8, 64), (8, 63)]


def test_compare_metrics():
    ref = torch.tensor([3.0, 4.0])
    m = compare(ref + torch.tensor([0.0, 0.5]), ref)
    assert m.max_abs == pytest.approx(0.5) and m.rel_l2 == pytest.approx(0.1)
    assert m.cosine == pytest.approx((9 + 18) / (5 * math.hypot(3, 4.5)))
    assert compare(torch.zeros(3), torch.zeros(3)).cosine == 1.0
    bad = compare(torch.tensor([float("nan"), 1.0]), torch.ones(2))
    assert math.isinf(bad.rel_l2) and bad.cosine == -1.0


# ----------------------------------------------------------------------------------------
# Round trips
# ----------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("fmt_dir, tol", [("torch_export_dir", 1e-6), pytest.param("onnx_dir", 1e-4, marks=ONNX)])
@pytest.mark.parametrize("shape", [(2, 5), (6, 16)])
def test_artifact_matches_eager_inside_dynamic_range(request, backbone, registry, fmt_dir, tol, shape):
    runner = load_runner(request.getfixturevalue(fmt_dir), registry=registry)
    eager = EagerRunner(backbone)
    z, t, sc, g = inputs(*shape)
    with torch.no_grad():
        torch.testing.assert_close(runner.denoise(z, t, sc, g), eager.denoise(z, t, sc, g), atol=tol, rtol=tol)
        torch.testing.assert_close(runner.denoise(z, t, None, g), eager.denoise(z, t, None, g), atol=tol, rtol=tol)
        torch.testing.assert_close(runner.decode(z, g), eager.decode(z, g), atol=10 * tol, rtol=tol)


@requires_wheel("onnx")                  # asserts the manifest records onnx's version
@pytest.mark.slow
def test_manifest_records_what_is_needed_to_run_and_rebuild(torch_export_dir, backbone):
    m = read_manifest(torch_export_dir)
    assert m["format"] == "torch-export" and m["precision"] == "fp32"
    assert set(m["files"]) == {"denoise", "decode"}
    assert all((torch_export_dir / f).exists() for f in m["files"].values())
    assert m["shapes"]["batch"] == {"min": 1, "opt": 3, "max": 6} and m["shapes"]["seq"]["max"] == 16
    assert m["capabilities"] == backbone.capabilities.to_dict()
    assert m["backbone"]["config"]["width"] == 32 and m["backbone"]["config"]["max_length"] == MAX_LEN
    assert m["versions"]["torch"] == torch.__version__ and m["versions"]["onnx"]
    assert m["source"] == {"backbone": "elf"}
    assert m["target"] == {"name": "x", "class": "elfkit.components.targets.XTarget", "output": "x",
                           "config": {"loss_space": "v"}}
    assert m["path"] == {"noise_scale": 2.0, "t_eps": 0.05, "t_min": 0.05}
    parity = m["parity"]
    assert parity["passed"] and {"denoise", "v", "decode"} <= set(parity["worst"])
    assert {c["t"] for c in parity["cases"] if c["output"] == "denoise"} == {0.02, 0.25, 0.5, 0.75, 0.98}
    assert parity["worst"]["denoise"]["max_abs"] == 0.0   # the saved program replays eager exactly


@ONNX
@pytest.mark.slow
def test_onnx_manifest_has_dynamic_axes_and_small_parity_error(onnx_dir):
    onnx = pytest.importorskip("onnx")
    m = read_manifest(onnx_dir)
    assert m["parity"]["worst"]["denoise"]["rel_l2"] < 1e-5
    graph = onnx.load(str(onnx_dir / m["files"]["denoise"])).graph
    names = [i.name for i in graph.input]
    assert names == ["z", "t", "self_cond", "guidance"]
    z_dims = graph.input[0].type.tensor_type.shape.dim
    assert z_dims[0].dim_param and z_dims[1].dim_param and z_dims[2].dim_value == D


@pytest.mark.slow
def test_runner_splits_batches_beyond_the_range_and_rejects_long_sequences(torch_export_dir, backbone, registry):
    runner, eager = load_runner(torch_export_dir, registry=registry), EagerRunner(backbone)
    z, t, sc, g = inputs(13, 7)                      # 13 > max batch 6: run as 6 + 6 + 1
    with torch.no_grad():
        torch.testing.assert_close(runner.denoise(z, t, sc, g), eager.denoise(z, t, sc, g), atol=1e-6, rtol=1e-6)
    with pytest.raises(ExportError, match="outside the exported range 2:8:16"):
        runner.denoise(*inputs(2, 17))


@pytest.mark.slow
@pytest.mark.parametrize("fmt_dir", ["torch_export_dir", pytest.param("onnx_dir", marks=ONNX)])
def test_sampling_with_artifact_gives_eager_tokens(request, backbone, registry, fmt_dir):
    runner = load_runner(request.getfixturevalue(fmt_dir), registry=registry)
    parts = dict(target=registry.build("target", "x").bind(FlowPath(noise_scale=2.0)),
                 sampler=registry.build("sampler", "sde", {"steps": 6}),
                 grid_time=registry.build("time", "logit-normal"),
                 guidance=registry.build("guidance", "self-cond", {"scale": 3.0}))
    eager = generate(EagerRunner(backbone), **parts, num=5, length=12, generator=torch.Generator().manual_seed(7))
    art = generate(runner, **parts, num=5, length=12, generator=torch.Generator().manual_seed(7))
    assert torch.equal(art.token_ids, eager.token_ids)
    torch.testing.assert_close(art.z, eager.z, atol=1e-4, rtol=1e-4)


# ----------------------------------------------------------------------------------------
# Parity refusal
# ----------------------------------------------------------------------------------------
class _SwappedWeightsExporter(TorchExportExporter):
    """Writes the denoise program of a *different* model: a deliberately broken artifact."""

    def _build(self, traced, out_dir):
        built = super()._build(traced, out_dir)
        other = trace_backbone(tiny_backbone(seed=99), SPEC, "cpu")
        torch.export.save(other.denoise_program, str(out_dir / built.files["denoise"]))
        return built


@pytest.mark.slow
def test_parity_refuses_a_broken_artifact(tmp_path, backbone, registry):
    exporter = _SwappedWeightsExporter(TorchExportConfig())
    with pytest.raises(ExportError, match="parity check against eager fp32 failed"):
        exporter.export(backbone, tmp_path, SPEC, target=TARGET)
    assert not (tmp_path / "manifest.json").exists()
    report = json.loads((tmp_path / "parity-failed.json").read_text())
    assert not report["passed"] and report["worst"]["denoise"]["rel_l2"] > 0.1
    with pytest.raises(ExportError, match="parity-failed.json"):
        load_runner(tmp_path, registry=registry)


@pytest.mark.slow
def test_reduced_precision_passes_its_thresholds_but_not_fp32_ones(tmp_path, backbone, registry):
    manifest = export_backbone(backbone, "torch-export", tmp_path, SPEC.model_copy(update={"precision": "bf16"}),
                               registry, target=TARGET)
    parity = json.loads(manifest.read_text())["parity"]
    assert 0 < parity["worst"]["denoise"]["rel_l2"] <= 3e-2    # bf16 really ran, within its own threshold
    fp32 = ParityThresholds.for_precision("fp32")
    refused = [c for c in parity["cases"]
               if violations(Metrics(c["max_abs"], c["rel_l2"], c["cosine"], c["ref_absmax"]), fp32)]
    assert refused                                           # the same figures fail the fp32 thresholds


class _CountingTarget(XTarget):
    """A target that exists only in a plugin (not in elfkit's built-ins); counts its conversions."""

    calls = 0

    def convert(self, out, z, t, path):
        type(self).calls += 1
        return super().convert(out, z, t, path)


def _plugin_registry():
    plugin = types.ModuleType("counting_target_plugin")

    @hookimpl
    def elfkit_register_components(registry):
        registry.add("target", "counting-x", _CountingTarget, TargetConfig)

    plugin.elfkit_register_components = elfkit_register_components
    return build_registry(entry_points=False, extra_plugins=[plugin])


@pytest.mark.slow
def test_parity_uses_the_callers_target_from_a_plugin(tmp_path, backbone):
    """The bound target is used as given: a plugin-only target on a non-default path works."""
    registry = _plugin_registry()
    path = FlowPath(noise_scale=1.5, t_eps=0.1)
    target = registry.build("target", "counting-x").bind(path, name="counting-x")
    spec = SPEC.model_copy(update={"batch": parse_range("1:2:2"), "seq": parse_range("2:4:4")})
    _CountingTarget.calls = 0
    m = json.loads(export_backbone(backbone, "torch-export", tmp_path, spec, registry, target=target).read_text())
    assert _CountingTarget.calls > 0 and m["parity"]["passed"]
    assert m["target"]["name"] == "counting-x" and m["target"]["class"].endswith("_CountingTarget")
    assert m["path"] == {"noise_scale": 1.5, "t_eps": 0.1, "t_min": 0.05}


# ----------------------------------------------------------------------------------------
# Capabilities, formats, errors
# ----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_backbone_without_optional_inputs_or_decoder(tmp_path, registry):
    bb = tiny_backbone(self_conditioning=False, guidance_tokens=False, decoder_head=False)
    export_backbone(bb, "torch-export", tmp_path, SPEC, registry, target=TARGET)
    runner, eager = load_runner(tmp_path, registry=registry), EagerRunner(bb)
    assert set(read_manifest(tmp_path)["files"]) == {"denoise"}
    z, t, _, _ = inputs(3, 9)
    with torch.no_grad():
        torch.testing.assert_close(runner.denoise(z, t, None, None), eager.denoise(z, t, None, None))
    with pytest.raises(ExportError, match="no decoder head"):
        runner.decode(z, None)


@pytest.mark.slow
def test_tied_unembedding_table_is_exported(tmp_path, registry):
    bb = tiny_backbone()
    table = torch.nn.Parameter(torch.randn(V, 16, generator=torch.Generator().manual_seed(3)))   # decoder_hidden 16
    bb.tie_unembedding(table)                                      # what a learned-table recipe builds
    export_backbone(bb, "torch-export", tmp_path, SPEC, registry, target=TARGET)
    runner, eager = load_runner(tmp_path, registry=registry), EagerRunner(bb)
    z, _, _, g = inputs(3, 9)
    with torch.no_grad():
        got = runner.decode(z, g)
        torch.testing.assert_close(got, eager.decode(z, g), atol=1e-5, rtol=1e-6)
        table.mul_(2.0)                                            # the artifact holds the table's values then
        assert (got - eager.decode(z, g)).abs().max() > 1e-2
    assert bb.unembed_table is table                               # exporting copies; the tie stays


def test_tensorrt_without_plugin_explains_installation(tmp_path, backbone, registry):
    with pytest.raises(MissingDependencyError, match=r'pip install "elfkit\[trt\]" ./plugins/elfkit-tensorrt'):
        export_backbone(backbone, "tensorrt", tmp_path, SPEC, registry, target=TARGET)


def test_unknown_format_lists_registered_exporters(tmp_path, backbone, registry):
    with pytest.raises(RegistryError, match="onnx, torch-export"):
        export_backbone(backbone, "tflite", tmp_path, SPEC, registry, target=TARGET)


def test_bad_exporter_config_is_an_export_error(tmp_path, backbone, registry):
    with pytest.raises(ExportError, match="aot_inductor"):
        export_backbone(backbone, "torch-export", tmp_path, SPEC, registry, target=TARGET,
                        config={"aot_inducter": True})


def test_onnx_bf16_on_cpu_is_refused_up_front(tmp_path, backbone, registry):
    with pytest.raises(ExportError, match="bf16"):
        export_backbone(backbone, "onnx", tmp_path, SPEC.model_copy(update={"precision": "bf16"}), registry,
                        target=TARGET)


def test_load_runner_on_a_plain_folder(tmp_path, registry):
    with pytest.raises(ExportError, match="not an elfkit export"):
        load_runner(tmp_path, registry=registry)


@pytest.mark.slow
def test_aot_inductor_package_round_trip(tmp_path, backbone, registry):
    spec = SPEC.model_copy(update={"batch": parse_range("1:2:4"), "seq": parse_range("2:8:12")})
    export_backbone(backbone, "torch-export", tmp_path, spec, registry, target=TARGET,
                    config={"aot_inductor": True})
    m = read_manifest(tmp_path)
    assert m["runtime"] == "aot_inductor" and {"denoise_aoti", "decode_aoti"} <= set(m["files"])
    assert m["parity"]["worst"]["denoise"]["rel_l2"] < 1e-5
    runner, eager = load_runner(tmp_path, registry=registry), EagerRunner(backbone)
    z, t, sc, g = inputs(3, 11)
    with torch.no_grad():
        torch.testing.assert_close(runner.denoise(z, t, sc, g), eager.denoise(z, t, sc, g), atol=1e-4, rtol=1e-4)


def test_reading_a_missing_or_unreadable_export_names_it(tmp_path):
    with pytest.raises(ExportError, match=r"export folder not found: .*nope"):
        read_manifest(tmp_path / "nope")
    with pytest.raises(ExportError, match=r"is not an elfkit export: no manifest.json"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_bytes(b"\xff\xfe binary")
    with pytest.raises(ExportError, match=r"cannot read .*manifest.json"):
        read_manifest(tmp_path)
