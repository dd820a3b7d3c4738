"""The evaluate stage (metrics.json layout, reference rows, skipping) and the reports built on it."""

from __future__ import annotations

import json
import math
import os
import textwrap
import types
from pathlib import Path
from typing import ClassVar

import pytest

from elfkit import hookimpl
from elfkit.config import ComponentConfig
from elfkit.errors import DataError
from elfkit.pipeline import evaluate
from elfkit.pipeline.evaluate import evaluate_stage, evaluate_texts, read_metrics
from elfkit.pipeline.report.aggregate import mean_stderr
from elfkit.pipeline.report.document import compare_runs, write_report
from elfkit.recipe.load import dump_yaml, load_recipe, resolved_dict
from elfkit.records import MetricRecord, SampleRecord
from elfkit.registry import build_registry
from tests.fixtures import fake_components
from tests.fixtures.optional import requires_wheel


# ----------------------------------------------------------------------------------------
# A stub evaluator whose numbers are easy to predict
# ----------------------------------------------------------------------------------------
class CharTokenizer:
    name = "chars"
    vocab_size = 256
    eos_id = pad_id = 3

    def encode(self, text: str) -> list[int]:
        return [ord(c) for c in text]

    def decode(self, ids: list[int]) -> str:
        return "".join(chr(i) for i in ids)


class StubPPLConfig(ComponentConfig):
    offset: float = 0.0
    """Added to the score (to tell two configs apart)."""


def disorder(text: str) -> float:
    """Fraction of adjacent character pairs that go down the alphabet (0 for sorted text)."""
    pairs = list(zip(text, text[1:], strict=False))
    return sum(b < a for a, b in pairs) / max(len(pairs), 1)


class StubPPL:
    """'gen_ppl' = 1 + offset + 10·mean disorder (order-sensitive); 'entropy' over characters."""

    needs_references: ClassVar[bool] = False
    calls: ClassVar[list[int]] = []

    def __init__(self, cfg: StubPPLConfig) -> None:
        self.cfg = cfg
        self.tokenizer = CharTokenizer()

    def __call__(self, samples: list[SampleRecord], *, references: list[str] | None = None) -> list[MetricRecord]:
        StubPPL.calls.append(len(samples))
        seed = samples[0].seed
        ppl = 1 + self.cfg.offset + 10 * sum(disorder(s.text) for s in samples) / len(samples)
        counts = [{c: s.text.count(c) / len(s.text) for c in set(s.text)} for s in samples]
        ent = sum(-sum(p * math.log(p) for p in c.values()) for c in counts) / len(samples)
        common = dict(n=len(samples), seed=seed, judge="stub-judge", precision="fp32")
        return [MetricRecord("gen_ppl", ppl, **common), MetricRecord("entropy", ent, **common)]


@hookimpl
def _register(registry) -> None:
    registry.add("evaluator", "stub-ppl", StubPPL, StubPPLConfig)


stub_plugin = types.ModuleType("stub_eval_plugin")
stub_plugin.elfkit_register_components = _register

RECIPE = """\
name: stub-run
data: {name: fake-dataset}
embedder: {name: fake-embedder}
backbone: {name: fake-backbone}
objective: {name: fake-objective}
sample:
  sampler: {name: fake-sampler}
  guidance: {name: fake-guidance}
  seeds: [0, 1]
eval:
  evaluators: [{name: stub-ppl}, {name: entropy}]
  num_references: 3
"""
SAMPLES = {0: ["abc def", "hello there", "zyx"], 1: ["ab ab ab", "the end", "mmm"]}
REFERENCES = ["abcdefg", "a quiet river", "hijklmnop", "not used: beyond num_references"]


@pytest.fixture(scope="module")
def registry():
    return build_registry(entry_points=False, extra_plugins=[fake_components, stub_plugin])


@pytest.fixture(autouse=True)
def _fresh_state():
    StubPPL.calls.clear()
    evaluate._REFERENCE_MEMO.clear()


def recipe_file(tmp_path: Path, text: str = RECIPE) -> Path:
    p = tmp_path / "recipe-src.yaml"
    p.write_text(textwrap.dedent(text))
    return p


def make_run(tmp_path: Path, registry, name: str = "run", overrides=(), samples=SAMPLES, train_log: bool = True):
    """A run directory as the pipeline leaves it after sampling."""
    run = tmp_path / name
    run.mkdir()
    recipe = load_recipe(recipe_file(tmp_path), list(overrides), registry=registry)
    (run / "recipe.yaml").write_text(dump_yaml(resolved_dict(recipe)))
    lines = [json.dumps({"text": t, "token_ids": [1, 2], "seed": seed, "index": i})
             for seed, texts in samples.items() for i, t in enumerate(texts)]
    (run / "samples.jsonl").write_text("\n".join(lines) + "\n")
    (run / "references.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in REFERENCES))
    if train_log:
        (run / "train_log.jsonl").write_text("".join(
            json.dumps({"step": s, "loss": 2.0 / (1 + s), "loss_decode": 1.0 / (1 + s), "lr": 1e-3}) + "\n"
            for s in range(0, 50, 10)))
    return run, recipe


def rows_by(rows, row, metric, judge):
    [hit] = [r for r in rows if (r.row, r.metric, r.judge) == (row, metric, judge)]
    return hit


# ----------------------------------------------------------------------------------------
# evaluate_stage
# ----------------------------------------------------------------------------------------
def test_metrics_json_layout(tmp_path, registry):
    run, recipe = make_run(tmp_path, registry)
    path = evaluate_stage(run / "samples.jsonl", run, recipe, registry)
    assert path == run / "metrics.json"
    raw = json.loads(path.read_text())
    assert all(set(d) == {"row", "metric", "mean", "stderr", "n", "seeds", "values", "judge", "precision"}
               for d in raw)
    rows = read_metrics(path)
    assert [(r.row, r.metric, r.judge) for r in rows] == [
        ("samples", "gen_ppl", "stub-judge"), ("samples", "entropy", "stub-judge"),
        ("samples", "entropy", "gpt2-tokenizer"),
        ("real text", "gen_ppl", "stub-judge"), ("real text", "entropy", "stub-judge"),
        ("real text", "entropy", "gpt2-tokenizer"),
        ("shuffled text", "gen_ppl", "stub-judge"), ("shuffled text", "entropy", "stub-judge"),
        ("shuffled text", "entropy", "gpt2-tokenizer")]

    ppl = rows_by(rows, "samples", "gen_ppl", "stub-judge")
    expected = [1 + 10 * sum(disorder(t) for t in SAMPLES[s]) / 3 for s in (0, 1)]
    assert ppl.seeds == [0, 1] and ppl.n == 6 and ppl.precision == "fp32"
    assert ppl.values == pytest.approx(expected)
    assert (ppl.mean, ppl.stderr) == pytest.approx(mean_stderr(expected))

    real = rows_by(rows, "real text", "gen_ppl", "stub-judge")
    shuf = rows_by(rows, "shuffled text", "gen_ppl", "stub-judge")
    assert (real.seeds, real.n, real.stderr) == ([], 3, None)         # num_references = 3
    assert real.mean == pytest.approx(1 + 10 * (0 + disorder("a quiet river") + 0) / 3)
    assert shuf.mean > real.mean                                       # shuffling breaks the order ...
    # ... but keeps each text's token histogram (shuffled in the stub's character tokens)
    assert rows_by(rows, "shuffled text", "entropy", "stub-judge").mean == pytest.approx(
        rows_by(rows, "real text", "entropy", "stub-judge").mean)


def test_evaluate_stage_skips_finished_work(tmp_path, registry):
    run, recipe = make_run(tmp_path, registry)
    evaluate_stage(run / "samples.jsonl", run, recipe, registry)
    first = len(StubPPL.calls)
    assert first == 4                                                  # 2 seeds + real + shuffled
    evaluate_stage(run / "samples.jsonl", run, recipe, registry)
    assert len(StubPPL.calls) == first                                 # metrics.json newer: skipped

    later = (run / "metrics.json").stat().st_mtime + 10
    os.utime(run / "samples.jsonl", (later, later))                    # new samples → re-evaluate
    evaluate_stage(run / "samples.jsonl", run, recipe, registry)
    assert len(StubPPL.calls) == first + 2                             # reference rows memoised

    changed = load_recipe(recipe_file(tmp_path), ["eval.evaluators=[{name: stub-ppl, offset: 5}, entropy]"],
                          registry=registry)
    evaluate._REFERENCE_MEMO.clear()
    evaluate_stage(run / "samples.jsonl", run, changed, registry)      # other eval settings → re-evaluate
    assert len(StubPPL.calls) == first + 6
    assert rows_by(read_metrics(run / "metrics.json"), "samples", "gen_ppl", "stub-judge").mean > 5


def test_reference_rows_can_be_switched_off(tmp_path, registry):
    run, recipe = make_run(tmp_path, registry, overrides=["eval.references=false"])
    rows = read_metrics(evaluate_stage(run / "samples.jsonl", run, recipe, registry))
    assert {r.row for r in rows} == {"samples"}


def test_evaluate_texts(registry):
    rows = evaluate_texts(["abc", "cba"], ["stub-ppl"], registry=registry, seed=7)
    ppl = rows_by(rows, "samples", "gen_ppl", "stub-judge")
    assert (ppl.mean, ppl.seeds, ppl.stderr, ppl.n) == (pytest.approx(6.0), [7], None, 2)


# ----------------------------------------------------------------------------------------
# Reports
# ----------------------------------------------------------------------------------------
@requires_wheel("matplotlib")
def test_write_report(tmp_path, registry):
    run, recipe = make_run(tmp_path, registry)
    evaluate_stage(run / "samples.jsonl", run, recipe, registry)
    text = write_report(run).read_text()
    assert text.startswith("# stub-run")
    for needle in ("## Metrics", "real text", "shuffled text", "stub-judge", "## Samples", "hello there",
                   "## Training", "loss_decode", "## Settings", "fake-sampler", "stub-ppl",
                   "![Gen. PPL vs entropy](frontier.png)", "![training loss](loss.png)"):
        assert needle in text, needle
    assert "not the paper's GPT-2 Large" in text
    for png in ("frontier.png", "loss.png"):
        assert (run / png).read_bytes()[:4] == b"\x89PNG"


@requires_wheel("matplotlib")
def test_partial_runs_get_partial_reports(tmp_path):
    run = tmp_path / "partial"
    run.mkdir()
    assert "## Metrics" not in write_report(run).read_text()          # nothing there yet
    # the trainer's log: event lines without losses, branch losses l2/ce next to the total
    log = [{"time": 1.0, "event": "start", "step": 0, "lr": 1e-4},
           {"time": 2.0, "step": 10, "loss": 6.0, "l2": 4.0, "ce": 10.0, "lr": 2e-4},
           {"time": 3.0, "step": 20, "loss": 3.0, "l2": 2.0, "ce": 5.0, "lr": 2e-4},
           {"time": 4.0, "event": "completed", "step": 20}]
    (run / "train_log.jsonl").write_text("".join(json.dumps(e) + "\n" for e in log) + "{truncated")
    (run / "samples.jsonl").write_text(json.dumps({"text": "hi", "token_ids": [], "seed": 0, "index": 0}) + "\n")
    text = write_report(run).read_text()
    assert "No metrics yet" in text and "elfkit eval" in text
    assert "| last step | 20 |" in text and "| l2 | first 4.000, min 2.000, last 2.000 |" in text
    assert "| lr | last 0.0002 |" in text and "time" not in text.split("## Training")[1]
    assert (run / "loss.png").is_file()


@requires_wheel("matplotlib")
def test_compare_runs(tmp_path, registry):
    a, ra = make_run(tmp_path, registry, "a")
    b, rb = make_run(tmp_path, registry, "b", overrides=["train.steps=7"],
                     samples={0: ["zyx wvu", "cba"]}, train_log=False)
    evaluate_stage(a / "samples.jsonl", a, ra, registry)
    evaluate_stage(b / "samples.jsonl", b, rb, registry)
    out = compare_runs([a, b], tmp_path / "cmp" / "comparison.md")
    text = out.read_text()
    assert "| rows | metric | judge | a | b |" in text
    assert "## Settings that differ" in text and "| train.steps | 1000 | 7 |" in text
    assert "![frontier](comparison-frontier.png)" in text
    assert (tmp_path / "cmp" / "comparison-frontier.png").is_file()


def test_bad_samples_file_names_the_line(tmp_path, registry):
    run, recipe = make_run(tmp_path, registry)
    (run / "samples.jsonl").write_text('{"text": "ok", "token_ids": [], "seed": 0, "index": 0}\nnot json\n')
    with pytest.raises(DataError, match=r"samples.jsonl:2"):
        evaluate_stage(run / "samples.jsonl", run, recipe, registry)


@requires_wheel("matplotlib")
def test_absent_branch_losses_are_not_drawn_as_zeros(tmp_path):
    run = tmp_path / "branches"
    run.mkdir()
    log = [{"step": 10, "loss": 6.0, "l2": 4.0, "ce": 10.0, "decoder_frac": 0.25},
           {"step": 20, "loss": 2.0, "l2": 2.0, "ce": 0.0, "decoder_frac": 0.0},      # no decoder rows
           {"step": 30, "loss": 5.0, "l2": 0.0, "ce": 5.0, "decoder_frac": 1.0},      # only decoder rows
           {"step": 40, "loss": 3.0, "l2": 1.5, "ce": 8.0, "decoder_frac": 0.5}]
    (run / "train_log.jsonl").write_text("".join(json.dumps(e) + "\n" for e in log))
    text = write_report(run).read_text()
    assert "| ce | first 10.00, min 5.000, last 8.000 |" in text
    assert "| l2 | first 4.000, min 1.500, last 1.500 |" in text


def test_denoising_section_shows_the_decoded_path(tmp_path):
    from elfkit.pipeline.sample import DENOISING_FILE, DenoisingFrame, write_denoising
    run = tmp_path / "den"
    run.mkdir()
    assert "## Denoising" not in write_report(run).read_text()
    write_denoising(run / DENOISING_FILE, [DenoisingFrame(0, 32, 0.0, "zq ## xx"),
                                           DenoisingFrame(31, 32, 0.9688, "in the beginning | god")])
    text = write_report(run).read_text()
    assert "## Denoising" in text and "| call | t | decoded x̂ |" in text
    assert "| 1 / 32 | 0.000 | zq ## xx |" in text and "| 32 / 32 | 0.969 | in the beginning \\| god |" in text


def test_frame_indices_spread_over_the_path():
    from elfkit.pipeline.sample import frame_indices
    assert frame_indices(64) == [0, 13, 25, 38, 50, 63]
    assert frame_indices(3) == [0, 1, 2] and frame_indices(1) == [0]
