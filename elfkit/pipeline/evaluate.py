"""The evaluate stage: ``samples.jsonl`` (+ ``references.jsonl``) → ``metrics.json``.

Each seed's samples go through every evaluator of ``recipe.eval.evaluators``; the per-seed
records are aggregated into rows of mean ± standard error (``elfkit.pipeline.report.aggregate``). With
``eval.references`` on and ``references.jsonl`` present, the same evaluators (those that need
no reference texts) also score two reference rows: the held-out real text and a copy with
each text's tokens shuffled (:func:`shuffle_tokens`). Conditional samples also get two
model-free baselines for the reference-based evaluators: "copy source" (the source as output)
and "other reference" (another held-out pair's reference: fluent, but blind to the source).

``metrics.json`` is a JSON list of rows (``row``: samples, real text, shuffled text, copy
source or other reference)::

    {"row": "samples", "metric": "gen_ppl", "mean": 41.2,
     "stderr": 1.3 | null, "n": 192, "seeds": [0, 1, 2], "values": [40.1, 43.8, 39.7],
     "judge": "SmolLM2-135M-Instruct-Q4_1", "precision": "fp32"}

The stage is skipped when ``metrics.json`` is newer than its inputs and was made with the same
eval settings (recorded in ``stages.json``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from elfkit.components.evaluators.base import Evaluator
from elfkit.components.evaluators.gpt2_bpe import gpt2_tokenizer
from elfkit.contracts import TextTokenizer
from elfkit.errors import DataError, RecipeError
from elfkit.fileio import atomic_write_text
from elfkit.pipeline.interrupts import interruptible
from elfkit.pipeline.report.aggregate import MetricRow, aggregate_records
from elfkit.pipeline.rundir import RunDir, fingerprint
from elfkit.recipe.load import load_recipe, resolved_dict
from elfkit.recipe.schema import ComponentRef, Recipe
from elfkit.records import MetricRecord, SampleRecord
from elfkit.registry import Registry, default_registry

log = logging.getLogger(__name__)

SHUFFLE_SEED = 0
STAGE = "evaluate"
_SAMPLE_FIELDS = {f.name for f in fields(SampleRecord)}
# reference rows are the same texts for every setting of a sweep: score them once per process
_REFERENCE_MEMO: dict[str, list[MetricRow]] = {}


# ----------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------
def shuffle_tokens(texts: Sequence[str], tokenizer: TextTokenizer, seed: int = 0) -> list[str]:
    """Each text with its own tokens in a random order (deterministic in ``seed`` and position)."""
    out = []
    for i, text in enumerate(texts):
        ids = list(tokenizer.encode(text))
        random.Random(seed + i).shuffle(ids)
        out.append(tokenizer.decode(ids))
    return out


def read_samples(path: Path) -> list[SampleRecord]:
    """``samples.jsonl``: one SampleRecord per line (extra keys are ignored)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"samples file not found: {path} (run the sample stage first: elfkit sample CKPT)")
    out = []
    for lineno, line in enumerate(_jsonl_text(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
            out.append(SampleRecord(**{k: v for k, v in d.items() if k in _SAMPLE_FIELDS}))
        except (json.JSONDecodeError, TypeError, AttributeError) as exc:
            raise DataError(f"{path}:{lineno}: not a sample record ({exc}); each line must be a JSON object "
                            "with at least text, token_ids, seed, index") from None
    if not out:
        raise DataError(f"{path} holds no samples")
    return out


def _jsonl_text(path: Path) -> str:
    """A JSON-lines file's text; a binary file is a DataError naming the offending byte."""
    raw = Path(path).read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not a UTF-8 text file (byte 0x{raw[exc.start]:02x} at offset {exc.start}); "
                        "expected one JSON object per line") from None


def read_references(path: Path, limit: int | None = None) -> list[str]:
    """``references.jsonl``: lines ``{"text": ...}`` of held-out real text."""
    texts = []
    for lineno, line in enumerate(_jsonl_text(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            texts.append(str(json.loads(line)["text"]))
        except (json.JSONDecodeError, KeyError, TypeError):
            raise DataError(f"{path}:{lineno}: expected a JSON object with a 'text' key") from None
    return texts[:limit] if limit else texts


def require_text(samples: Sequence[SampleRecord], path: Path) -> None:
    """Refuse a sample set in which every text is empty: there is nothing to score, and it is
    the mark of a broken (usually diverged) model rather than a result."""
    if samples and not any(s.text.strip() for s in samples):
        raise DataError(f"all {len(samples)} samples in {path} are empty: the model generates only end-of-text "
                        "or padding tokens, which usually means training diverged or was far too short (see "
                        "train_log.jsonl and the report's Training section); no metrics are reported")


def write_metrics(rows: Sequence[MetricRow], path: Path) -> Path:
    atomic_write_text(Path(path), json.dumps([r.to_dict() for r in rows], indent=2) + "\n")
    return Path(path)


def read_metrics(path: Path) -> list[MetricRow]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"cannot read metrics from {path}: {exc}") from None
    return [MetricRow.from_dict(d) for d in data]


# ----------------------------------------------------------------------------------------
# Evaluators
# ----------------------------------------------------------------------------------------
def build_evaluators(refs: Sequence[ComponentRef | str | dict[str, Any]],
                     registry: Registry | None = None) -> list[tuple[str, Evaluator]]:
    """(name, evaluator) for each reference (``"gen-ppl"``, ``{name: gen-ppl, judge: ...}``)."""
    registry = registry or default_registry()
    out = []
    for i, ref in enumerate(refs):
        if not isinstance(ref, ComponentRef):
            ref = ComponentRef.model_validate(ref)
        spec = registry.get("evaluator", ref.name)
        try:
            cfg = ref._config if ref._config is not None else spec.config(**ref.params)
        except ValidationError as exc:
            raise RecipeError(f"eval.evaluators.{i} ({ref.name}): {exc}") from None
        out.append((ref.name, spec.factory(cfg)))
    return out


def _run(evaluators: Sequence[tuple[str, Evaluator]], samples: list[SampleRecord],
         references: list[str] | None = None, what: str | None = None) -> list[MetricRecord]:
    records = []
    for name, ev in evaluators:
        log.info("evaluating %d %s with %s", len(samples), what or f"samples (seed {samples[0].seed})", name)
        records.extend(ev(samples, references=references))
    return records


def _shuffle_tokenizer(evaluators: Sequence[tuple[str, Evaluator]]):
    """The first evaluator's tokenizer (the judge's, for gen-ppl), else the GPT-2 BPE."""
    for _, ev in evaluators:
        tok = getattr(ev, "tokenizer", None)
        if tok is not None:
            return tok
    return gpt2_tokenizer()


def score_reference_rows(texts: Sequence[str], evaluators: Sequence[tuple[str, Evaluator]]) -> list[MetricRow]:
    """'real text' and 'shuffled text' rows, scored by the evaluators that need no references."""
    usable = [(n, e) for n, e in evaluators if not getattr(e, "needs_references", False)]
    if not texts or not usable:
        return []
    rows = []
    shuffled = shuffle_tokens(texts, _shuffle_tokenizer(usable), seed=SHUFFLE_SEED)
    for row, batch in (("real text", list(texts)), ("shuffled text", shuffled)):
        samples = [SampleRecord(text=t, token_ids=[], seed=SHUFFLE_SEED, index=i) for i, t in enumerate(batch)]
        records = _run(usable, samples, what=f"{row} texts")
        for r in records:
            r.seed = None  # one fixed text set, not a sampling seed
        rows.extend(aggregate_records(records, row))
    return rows


def evaluate_samples(samples: Sequence[SampleRecord], evaluators: Sequence[tuple[str, Evaluator]], *,
                     reference_texts: Sequence[str] | None = None,
                     references: Sequence[str] | None = None) -> list[MetricRow]:
    """Score every seed's samples, aggregate over seeds, add the reference rows.

    ``references`` (one per sample of each seed, in index order) override the samples' own
    ``reference`` fields for BLEU/ROUGE; ``reference_texts`` are the held-out real texts.
    """
    by_seed: dict[int, list[SampleRecord]] = {}
    for s in samples:
        by_seed.setdefault(s.seed, []).append(s)
    records: list[MetricRecord] = []
    for seed in sorted(by_seed):
        group = sorted(by_seed[seed], key=lambda s: s.index)
        records.extend(_run(evaluators, group, list(references) if references is not None else None))
    rows = aggregate_records(records, "samples")
    first_seed = by_seed[min(by_seed)] if by_seed else []   # baselines do not depend on the seed
    rows.extend(score_copy_source_row(first_seed, evaluators))
    rows.extend(score_other_reference_row(first_seed, evaluators))
    if reference_texts:
        rows.extend(score_reference_rows(reference_texts, evaluators))
    return rows


def _baseline_row(samples: Sequence[SampleRecord], evaluators: Sequence[tuple[str, Evaluator]],
                  row: str, output: Callable[[list[SampleRecord], int], str], *,
                  min_pairs: int = 1) -> list[MetricRow]:
    """Score a fixed, model-free output per conditional sample with the reference-based evaluators."""
    usable = [(n, e) for n, e in evaluators if getattr(e, "needs_references", False)]
    pairs = sorted((s for s in samples if s.source is not None and s.reference is not None), key=lambda s: s.index)
    if not usable or len(pairs) < min_pairs:
        return []
    outputs = [SampleRecord(text=output(pairs, i), token_ids=[], seed=s.seed, index=s.index, source=s.source,
                            reference=s.reference) for i, s in enumerate(pairs)]
    records = _run(usable, outputs, what=row)
    for r in records:
        r.seed = None
    return aggregate_records(records, row)


def score_copy_source_row(samples: Sequence[SampleRecord],
                          evaluators: Sequence[tuple[str, Evaluator]]) -> list[MetricRow]:
    """Conditional tasks: the 'copy source' baseline row (each source passed through unchanged as
    its own output), scored by the evaluators that compare with references (BLEU, ROUGE)."""
    return _baseline_row(samples, evaluators, "copy source", lambda pairs, i: pairs[i].source or "")


def score_other_reference_row(samples: Sequence[SampleRecord],
                              evaluators: Sequence[tuple[str, Evaluator]]) -> list[MetricRow]:
    """Conditional tasks: the 'other reference' baseline row: each output is the reference of the
    *next* held-out pair, i.e. fluent target-language text that ignores its source. A model must
    beat it to show that it uses the condition, not only that it writes the target language."""
    return _baseline_row(samples, evaluators, "other reference",
                         lambda pairs, i: pairs[(i + 1) % len(pairs)].reference or "", min_pairs=2)


# ----------------------------------------------------------------------------------------
# The stage
# ----------------------------------------------------------------------------------------
def eval_fingerprint(recipe: Recipe, with_references: bool) -> str:
    return fingerprint({"eval": resolved_dict(recipe)["eval"], "references": with_references})


def _fresh(out: Path, inputs: Sequence[Path], run: RunDir, fp: str) -> bool:
    if not out.is_file():
        return False
    if any(out.stat().st_mtime < p.stat().st_mtime for p in inputs):
        return False
    recorded = run.stages().get(STAGE, {}).get("fingerprint")
    return recorded is None or recorded == fp


def _metrics_kept(args: Mapping[str, Any]) -> str:
    return (f"The samples {args['samples_path']} are kept; metrics.json was not written. Rerun the same command "
            "to evaluate again (finished stages are skipped).")


@interruptible("evaluation", _metrics_kept)
def evaluate_stage(samples_path: Path, run_dir: Path, recipe: Recipe, registry: Registry | None = None) -> Path:
    """Write ``run_dir/metrics.json`` for ``samples_path``; returns its path (skips finished work)."""
    run = RunDir(Path(run_dir))
    samples_path = Path(samples_path)
    if not samples_path.is_file():
        raise DataError(f"samples file not found: {samples_path} (the sample stage writes it)")
    use_refs = recipe.eval.references and run.references.is_file()
    fp = eval_fingerprint(recipe, use_refs)
    inputs = [samples_path] + ([run.references] if use_refs else [])
    if _fresh(run.metrics, inputs, run, fp):
        log.info("metrics up to date: %s", run.metrics)
        return run.metrics
    if not recipe.eval.evaluators:
        log.warning("recipe %s lists no eval.evaluators: metrics.json will be empty", recipe.name)
    samples = read_samples(samples_path)
    require_text(samples, samples_path)
    evaluators = build_evaluators(recipe.eval.evaluators, registry)
    rows = evaluate_samples(samples, evaluators)
    if use_refs:
        texts = read_references(run.references, recipe.eval.num_references)
        key = fingerprint([fp, hashlib.sha256("\x00".join(texts).encode()).hexdigest()])
        if key not in _REFERENCE_MEMO:
            _REFERENCE_MEMO[key] = score_reference_rows(texts, evaluators)
        rows.extend(_REFERENCE_MEMO[key])
    write_metrics(rows, run.metrics)
    run.mark_done(STAGE, fp)
    return run.metrics


def evaluate_samples_file(samples: Path, recipe_path: Path | None, overrides: Sequence[str], *,
                          plugin_files: Sequence[str] = ()) -> Path:
    """``elfkit eval``: score a samples file with a recipe's evaluators (by default the
    ``recipe.yaml`` beside it); ``metrics.json`` goes beside the samples."""
    samples = Path(samples)
    recipe_path = recipe_path or RunDir(samples.parent).recipe
    if not recipe_path.is_file():
        raise RecipeError(f"no recipe for {samples}: pass --recipe FILE (looked for {recipe_path})")
    recipe = load_recipe(recipe_path, overrides, extra_plugins=plugin_files)
    read_samples(samples)  # clear error on a bad file before loading judges
    return evaluate_stage(samples, samples.parent, recipe, default_registry(recipe.plugins))


def evaluate_texts(texts: Sequence[str], evaluators: Sequence[ComponentRef | str | dict[str, Any]] = ("gen-ppl",),
                   *, registry: Registry | None = None, references: Sequence[str] | None = None,
                   reference_texts: Sequence[str] | None = None, seed: int = 0) -> list[MetricRow]:
    """Score plain texts (one seed) with the named evaluators; no run directory needed."""
    samples = [SampleRecord(text=t, token_ids=[], seed=seed, index=i) for i, t in enumerate(texts)]
    if not samples:
        raise DataError("no texts to evaluate")
    return evaluate_samples(samples, build_evaluators(evaluators, registry), reference_texts=reference_texts,
                            references=references)
