"""Sweeps with fast fake train/sample stages that record their calls (the evaluate stage is real)."""

from __future__ import annotations

import csv
import json
import textwrap
from pathlib import Path

import pytest

from elfkit.errors import RecipeError
from elfkit.pipeline import evaluate, sweep
from elfkit.pipeline.sweep import parse_grid, run_sweep
from elfkit.pipeline.train.guard import TrainingDiverged
from elfkit.registry import build_registry
from tests.fixtures import fake_components
from tests.fixtures.optional import requires_wheel
from tests.unit.pipeline.report.test_document import StubPPL, stub_plugin

RECIPE = """\
name: tiny-sweep
data: {name: fake-dataset}
embedder: {name: fake-embedder}
backbone: {name: fake-backbone}
objective: {name: fake-objective}
target: {name: x, loss_space: v}
sample:
  sampler: {name: fake-sampler, size: 2}
  guidance: {name: fake-guidance}
  seeds: [0, 1]
eval:
  evaluators: [{name: stub-ppl}]
sweep:
  grid:
    target: [x, v]
"""


class FakeStages:
    """train_stage/sample_stage with the real contracts' skip-if-done behaviour, recording calls."""

    def __init__(self, crash_on: str | None = None, diverge_on: str | None = None) -> None:
        self.calls: list[tuple] = []
        self.crash_on = crash_on
        self.diverge_on = diverge_on

    def train_stage(self, recipe, run_dir: Path) -> Path:
        ckpt = Path(run_dir) / "checkpoints" / "last.pt"
        if ckpt.exists():
            self.calls.append(("train-skipped", recipe.target.name))
            return ckpt
        if recipe.target.name == self.crash_on:
            raise KeyboardInterrupt("interrupted mid-sweep")
        if recipe.target.name == self.diverge_on:
            self.calls.append(("train-diverged", recipe.target.name))
            raise TrainingDiverged("training diverged at step 4: 3 consecutive steps with a non-finite loss")
        self.calls.append(("train", recipe.target.name))
        ckpt.parent.mkdir(parents=True)
        ckpt.write_text(json.dumps({"target": recipe.target.name}))
        # like the real stage: held-out texts are written where the data is prepared
        (Path(run_dir) / "references.jsonl").write_text(json.dumps({"text": "abcdefghij"}) + "\n")
        return ckpt

    def sample_stage(self, checkpoint: Path, run_dir: Path, recipe) -> Path:
        out = Path(run_dir) / "samples.jsonl"
        if out.exists():
            self.calls.append(("sample-skipped",))
            return out
        target = json.loads(Path(checkpoint).read_text())["target"]
        size = recipe.sample.sampler.config.size
        self.calls.append(("sample", target, size))
        # more sampler "steps" → more ordered text → lower stub PPL; target v → more disorder
        text = "abcdefgh"[: size * 2] + ("zyx" if target == "v" else "")
        lines = [json.dumps({"text": text[: len(text) - i], "token_ids": [], "seed": s, "index": i})
                 for s in recipe.sample.seeds for i in range(3)]
        out.write_text("\n".join(lines) + "\n")
        return out


@pytest.fixture(scope="module")
def registry():
    return build_registry(entry_points=False, extra_plugins=[fake_components, stub_plugin])


@pytest.fixture(autouse=True)
def _fresh_state():
    StubPPL.calls.clear()
    evaluate._REFERENCE_MEMO.clear()


def install(monkeypatch, stages: FakeStages) -> None:
    monkeypatch.setattr(sweep, "train_stage", stages.train_stage)
    monkeypatch.setattr(sweep, "sample_stage", stages.sample_stage)


def write_recipe(tmp_path: Path) -> Path:
    p = tmp_path / "sweep.yaml"
    p.write_text(textwrap.dedent(RECIPE))
    return p


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
@requires_wheel("matplotlib")
def test_two_by_two_sweep(tmp_path, monkeypatch, registry):
    stages = FakeStages()
    install(monkeypatch, stages)
    out = tmp_path / "out"
    md = run_sweep(write_recipe(tmp_path), {"sampler.size": [2, 4]}, out, registry=registry)

    # trained once per training setting, sampled once per (training, sampling) setting
    assert stages.calls == [("train", "x"), ("sample", "x", 2), ("sample", "x", 4),
                            ("train", "v"), ("sample", "v", 2), ("sample", "v", 4)]
    rows = read_csv(out / "sweep.csv")
    assert len(rows) == 4
    assert list(rows[0]) == ["setting", "target", "sampler.size", "gen_ppl", "gen_ppl_stderr", "entropy",
                             "entropy_stderr", "seeds", "status"]
    assert [(r["target"], r["sampler.size"], r["seeds"]) for r in rows] == [
        ("x", "2", "2"), ("x", "4", "2"), ("v", "2", "2"), ("v", "4", "2")]
    ppl = {(r["target"], r["sampler.size"]): float(r["gen_ppl"]) for r in rows}
    assert ppl[("v", "2")] > ppl[("x", "2")]                           # the settings really differ
    # two seeds of identical samples → zero standard error (not blank: blank means one seed)
    assert float(rows[0]["gen_ppl_stderr"]) == 0.0
    # layout: OUT/<train slug>/sampling/<sample slug>/ with metrics and a report each
    for r in rows:
        d = out / r["setting"]
        assert d.parent.name == "sampling" and d.name.startswith("size=")
        assert d.parent.parent.name.startswith(f"target={r['target']}-")
        assert (d / "metrics.json").is_file() and (d / "report.md").is_file() and (d / "recipe.yaml").is_file()

    text = md.read_text()
    table = [ln for ln in text.splitlines() if ln.startswith("| ") and "report.md" in ln]
    assert len(table) == 4
    # reference rows come from the training directory's references.jsonl, copied per setting
    assert "Reference rows" in text and "![Gen. PPL vs entropy](frontier.png)" in text
    real = [m for m in json.loads((out / rows[0]["setting"] / "metrics.json").read_text()) if m["row"] == "real text"]
    assert real and real[0]["mean"] == pytest.approx(1.0)             # sorted text: no disorder
    assert (out / "frontier.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
@requires_wheel("matplotlib")
def test_a_diverging_setting_is_marked_and_the_others_still_run(tmp_path, monkeypatch, registry):
    stages = FakeStages(diverge_on="x")       # the first training setting diverges
    install(monkeypatch, stages)
    out = tmp_path / "out"
    with pytest.raises(TrainingDiverged) as exc:
        run_sweep(write_recipe(tmp_path), {"sampler.size": [2, 4]}, out, registry=registry)

    assert stages.calls == [("train-diverged", "x"), ("train", "v"), ("sample", "v", 2), ("sample", "v", 4)]
    message = str(exc.value)
    assert message.startswith("1 of 2 training setting(s) diverged: target=x (see ")
    assert f"marked 'diverged', is in {out / 'sweep.md'}" in message
    rows = read_csv(out / "sweep.csv")
    assert [(r["target"], r["sampler.size"], r["status"]) for r in rows] == [
        ("x", "2", "diverged"), ("x", "4", "diverged"), ("v", "2", "ok"), ("v", "4", "ok")]
    assert rows[0]["gen_ppl"] == "" and float(rows[2]["gen_ppl"]) > 0
    assert (out / rows[0]["setting"] / "report.md").is_file()        # the diverged training's own report
    table = [ln for ln in (out / "sweep.md").read_text().splitlines() if ln.startswith("| x |")]
    assert len(table) == 2 and all(ln.count("diverged") == 2 for ln in table)   # gen_ppl and entropy cells
    assert "Reference rows" in (out / "sweep.md").read_text()           # taken from a setting that has them


@pytest.mark.slow
@requires_wheel("matplotlib")
def test_resume_does_not_retrain_finished_settings(tmp_path, monkeypatch, registry):
    recipe, out = write_recipe(tmp_path), tmp_path / "out"
    first = FakeStages(crash_on="v")
    install(monkeypatch, first)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(recipe, {"sampler.size": [2, 4]}, out, registry=registry)
    assert first.calls == [("train", "x"), ("sample", "x", 2), ("sample", "x", 4)]
    evaluated = len(StubPPL.calls)

    second = FakeStages()
    install(monkeypatch, second)
    run_sweep(recipe, {"sampler.size": [2, 4]}, out, registry=registry)
    assert second.calls == [("train-skipped", "x"), ("sample-skipped",), ("sample-skipped",),
                            ("train", "v"), ("sample", "v", 2), ("sample", "v", 4)]
    # the finished evaluations were not redone: only v's two settings × two seeds
    assert len(StubPPL.calls) == evaluated + 4
    assert len(read_csv(out / "sweep.csv")) == 4


def test_grid_keys_and_errors(tmp_path, monkeypatch, registry):
    keys = parse_grid({"target": ["x"], "guidance.scale": [1, 2], "train.steps": [5]})
    assert [(k.key, k.sampling) for k in keys] == [
        ("target.name", False), ("sample.guidance.scale", True), ("train.steps", False)]
    with pytest.raises(RecipeError, match="non-empty list"):
        parse_grid({"target": []})
    with pytest.raises(RecipeError, match="both set"):
        parse_grid({"target": ["x"], "target.name": ["v"]})
    # a bad value fails while planning, before anything is trained
    stages = FakeStages()
    install(monkeypatch, stages)
    with pytest.raises(RecipeError, match="nope"):
        run_sweep(write_recipe(tmp_path), {"sampler.size": [2, "nope"]}, tmp_path / "out", registry=registry)
    assert stages.calls == []


# ----------------------------------------------------------------------------------------
# The frontier groups by the swept sampling key
# ----------------------------------------------------------------------------------------
def _rows(ppl: float, ent: float):
    from elfkit.pipeline.report.aggregate import MetricRow
    return [MetricRow("samples", "gen_ppl", ppl, None, 8), MetricRow("samples", "entropy", ent, None, 8)]


def test_frontier_has_one_line_per_sampler_with_steps_as_points():
    keys = parse_grid({"sampler": ["euler", "dpmpp-2m"], "sampler.steps": [32, 8, 16]})
    results = [sweep.SettingResult({}, {"sampler": name, "sampler.steps": k}, Path("x"), _rows(10.0 + k, 4.0 + k))
               for name in ("euler", "dpmpp-2m") for k in (32, 8, 16)]
    curves, points = sweep.frontier_curves(results, keys)
    assert points == "steps" and list(curves) == ["sampler=euler", "sampler=dpmpp-2m"]
    assert [p.label for p in curves["sampler=euler"]] == ["8", "16", "32"]          # in step order
    assert [p.ppl for p in curves["sampler=dpmpp-2m"]] == [18.0, 26.0, 42.0]


def test_frontier_with_whole_sampler_configs_and_training_keys():
    keys = parse_grid({"target": ["x", "v"], "sample.sampler": [{"name": "euler", "steps": 16},
                                                                {"name": "euler", "steps": 8}]})
    results = [sweep.SettingResult({"target": t}, {"sample.sampler": s}, Path("x"), _rows(5.0, 4.0))
               for t in ("x", "v") for s in keys[1].values]
    curves, points = sweep.frontier_curves(results, keys)
    assert points == "steps"
    assert list(curves) == ["target=x, sample.sampler=euler", "target=v, sample.sampler=euler"]
    assert [p.label for p in curves["target=v, sample.sampler=euler"]] == ["8", "16"]


def test_frontier_without_steps_uses_the_last_sampling_key_as_points():
    keys = parse_grid({"target": ["x", "v"], "guidance.scale": [1.0, 2.0]})
    results = [sweep.SettingResult({"target": t}, {"guidance.scale": g}, Path("x"), _rows(5.0, 4.0))
               for t in ("x", "v") for g in (1.0, 2.0)]
    curves, points = sweep.frontier_curves(results, keys)
    assert points == "guidance.scale" and list(curves) == ["target=x", "target=v"]
    assert [p.label for p in curves["target=x"]] == ["scale=1.0", "scale=2.0"]


def test_check_grid_names_each_bad_value_and_explains_the_short_form(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(RECIPE, encoding="utf-8")
    registry = build_registry(extra_plugins=[fake_components, stub_plugin], entry_points=False)
    sweep.check_grid(path, {"target": ["x", "v"], "sampler.size": [1, 3]}, registry=registry)
    with pytest.raises(RecipeError) as err:
        sweep.check_grid(path, {"target": ["x", "nope"], "sampler": [{"name": "fake-sampler", "size": 3}],
                                "sampler.sizee": [1]}, registry=registry)
    msg = str(err.value)
    assert "sweep.grid.target[1] = \"nope\" (as target.name)" in msg and "sweep.grid.target[0]" not in msg
    assert "'sampler' is short for sample.sampler.name" in msg and "use the key sample.sampler" in msg
    assert "sweep.grid.sampler.sizee[0]" in msg
