"""Metric math against hand-computed values: PPL weights, entropy, BLEU, ROUGE, mean ± s.e."""

from __future__ import annotations

import math

import pytest
import torch

from elfkit.components.evaluators import BLEUEvaluator, EntropyEvaluator, ROUGEEvaluator
from elfkit.components.evaluators.bleu import BLEUConfig
from elfkit.components.evaluators.entropy import EntropyConfig
from elfkit.components.evaluators.gpt2_bpe import gpt2_tokenizer
from elfkit.components.evaluators.metrics import (
    corpus_bleu,
    corpus_ppl,
    mean_unigram_entropy,
    pad_right,
    ppl_weights,
    rouge_f1,
    unigram_entropy,
)
from elfkit.components.evaluators.rouge import ROUGEConfig
from elfkit.errors import DataError
from elfkit.pipeline.report.aggregate import aggregate_records, mean_stderr
from elfkit.records import MetricRecord, SampleRecord
from tests.fixtures.optional import requires_wheel


def samples(texts, seed=0, refs=None):
    return [SampleRecord(text=t, token_ids=[], seed=seed, index=i, reference=None if refs is None else refs[i])
            for i, t in enumerate(texts)]


# ----------------------------------------------------------------------------------------
# Gen. PPL weights and corpus PPL
# ----------------------------------------------------------------------------------------
def test_ppl_weights_first_token_unscored_first_eos_scored():
    eos = 0
    ids = torch.tensor([[5, 6, 0, 0, 0],     # sample "5 6", then padding: the first pad EOS is scored
                        [5, 0, 6, 0, 0],     # an EOS inside the text is the first one; later EOS not
                        [0, 5, 6, 7, 8]])    # EOS at position 0 is never a target
    w = ppl_weights(ids, eos)
    assert w.shape == (3, 4)
    assert w.tolist() == [[1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 1, 1]]


def test_corpus_ppl_is_token_weighted():
    nll = torch.tensor([[1.0, 1.0, 1.0, 1.0], [3.0, 0.0, 0.0, 0.0]])
    w = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 0.0, 0.0, 0.0]])
    # exp((4·1 + 3) / 5), not the mean of per-sample PPLs (e + e³)/2
    assert corpus_ppl(nll, w) == pytest.approx(math.exp(7 / 5))
    assert corpus_ppl(nll, w) != pytest.approx((math.e + math.exp(3)) / 2)


def test_pad_right_masks_real_tokens():
    ids, mask = pad_right([[1, 2, 3], [4]], pad_id=9, width=4)
    assert ids.tolist() == [[1, 2, 3, 9], [4, 9, 9, 9]]
    assert mask.tolist() == [[1, 1, 1, 0], [1, 0, 0, 0]]


# ----------------------------------------------------------------------------------------
# Entropy
# ----------------------------------------------------------------------------------------
def test_unigram_entropy_natural_log():
    assert unigram_entropy([1, 1, 2, 2]) == pytest.approx(math.log(2))
    assert unigram_entropy([1, 2, 3, 4]) == pytest.approx(math.log(4))
    assert unigram_entropy([7, 7, 7]) == 0.0
    # per-sample entropies are averaged (each sample weighs the same, whatever its length)
    assert mean_unigram_entropy([[1, 1, 2, 2], [1, 2, 3, 4, 1, 2, 3, 4]]) == pytest.approx(1.5 * math.log(2))
    with pytest.raises(ValueError):
        unigram_entropy([])


def test_entropy_evaluator_uses_exact_gpt2_bpe():
    tok = gpt2_tokenizer()
    # the ids tiktoken's gpt2 encoding gives (offline-resources.md §4)
    assert tok.encode("Hello world, this is ELF.") == [15496, 995, 11, 428, 318, 17852, 37, 13]
    assert tok.eos_id == 50256 and tok.vocab_size == 50257
    ev = EntropyEvaluator(EntropyConfig())
    # " a a b b" → 4 tokens ' a',' a',' b',' b' → ln 2; "" is dropped
    recs = ev(samples([" a a b b", ""], seed=3))
    assert len(recs) == 1 and recs[0].name == "entropy"
    assert recs[0].value == pytest.approx(math.log(2))
    assert (recs[0].n, recs[0].seed, recs[0].judge, recs[0].precision) == (1, 3, "gpt2-tokenizer", "n/a")
    assert recs[0].details == {"dropped_empty": 1}


def test_entropy_truncates_to_max_length():
    ev = EntropyEvaluator(EntropyConfig(max_length=2))
    assert ev(samples([" a b c d"]))[0].value == pytest.approx(math.log(2))


# ----------------------------------------------------------------------------------------
# BLEU / ROUGE (expected values computed by hand, see comments)
# ----------------------------------------------------------------------------------------
@requires_wheel("sacrebleu")
def test_bleu_known_values():
    # identical → 100
    assert corpus_bleu(["the cat sat on the mat"], ["the cat sat on the mat"]) == pytest.approx(100.0)
    # hyp "a b c d" vs ref "a b c e", equal lengths (BP = 1):
    # p1 = 3/4, p2 = 2/3, p3 = 1/2, p4 = 0/1 → 'exp' smoothing gives 1/(2·1) = 1/2
    # BLEU = (3/4 · 2/3 · 1/2 · 1/2)^(1/4) = 0.125^0.25 = 59.46; uppercase hyp checks lowercase=True
    assert corpus_bleu(["A B C D"], ["a b c e"]) == pytest.approx(100 * 0.125 ** 0.25, abs=1e-3)
    # a 3-token hypothesis has no 4-grams: effective order uses n ≤ 3 → exact match scores 100
    assert corpus_bleu(["a b c"], ["a b c"]) == pytest.approx(100.0)


@requires_wheel("rouge-score")
def test_rouge_known_values():
    # hyp "the cat sat" vs ref "the cat sat on the mat":
    # rouge1 P=3/3 R=3/6 → F=2/3; rouge2 P=2/2 R=2/5 → F=4/7; rougeL LCS=3 → F=2/3
    s = rouge_f1(["the cat sat"], ["the cat sat on the mat"])
    assert s["rouge1"] == pytest.approx(200 / 3)
    assert s["rouge2"] == pytest.approx(400 / 7)
    assert s["rougeL"] == pytest.approx(200 / 3)
    # stemming: cats→cat, running/runs→run gives a perfect unigram match; mean over 2 examples
    s = rouge_f1(["cats running", "the cat sat"], ["cat runs", "the cat sat on the mat"])
    assert s["rouge1"] == pytest.approx((100 + 200 / 3) / 2)


@requires_wheel("sacrebleu", "rouge-score")
def test_bleu_rouge_evaluators_use_sample_references():
    recs = BLEUEvaluator(BLEUConfig())(samples(["A B C D"], seed=1, refs=["a b c e"]))
    assert [(r.name, r.n, r.seed) for r in recs] == [("bleu", 1, 1)]
    assert recs[0].value == pytest.approx(59.46, abs=0.01)
    assert recs[0].judge and recs[0].precision == "n/a"
    recs = ROUGEEvaluator(ROUGEConfig())(samples(["the cat sat"]), references=["the cat sat on the mat"])
    assert {r.name: round(r.value, 2) for r in recs} == {"rouge1": 66.67, "rouge2": 57.14, "rougeL": 66.67}


def test_bleu_without_references_is_a_clear_error():
    with pytest.raises(DataError, match="reference"):
        BLEUEvaluator(BLEUConfig())(samples(["a b"]))
    with pytest.raises(DataError, match="one seed"):
        two_seeds = samples(["a"], seed=0) + samples(["b"], seed=1)
        ROUGEEvaluator(ROUGEConfig())(two_seeds, references=["a", "b"])


# ----------------------------------------------------------------------------------------
# Multi-seed aggregation
# ----------------------------------------------------------------------------------------
def test_mean_stderr():
    mean, se = mean_stderr([1.0, 2.0, 3.0])
    assert mean == 2.0
    assert se == pytest.approx(1 / math.sqrt(3))      # sd (ddof=1) = 1, n = 3 seeds
    assert mean_stderr([5.0]) == (5.0, None)           # one seed: no error bar


def test_aggregate_records_groups_by_metric_and_judge():
    recs = [MetricRecord("gen_ppl", v, n=10, seed=s, judge="j", precision="fp32") for s, v in [(2, 30.0), (0, 10.0)]]
    recs += [MetricRecord("entropy", 5.0, n=10, seed=0, judge="j", precision="fp32"),
             MetricRecord("entropy", 5.4, n=10, seed=0, judge="gpt2-tokenizer", precision="n/a")]
    rows = aggregate_records(recs, "samples")
    assert [(r.metric, r.judge) for r in rows] == [("gen_ppl", "j"), ("entropy", "j"), ("entropy", "gpt2-tokenizer")]
    ppl = rows[0]
    assert (ppl.mean, ppl.n, ppl.seeds, ppl.values) == (20.0, 20, [0, 2], [10.0, 30.0])
    assert ppl.stderr == pytest.approx(math.sqrt(200) / math.sqrt(2))
    assert rows[1].stderr is None
    with pytest.raises(ValueError, match="same seed"):
        aggregate_records(recs + [MetricRecord("gen_ppl", 1.0, n=1, seed=0, judge="j", precision="fp32")], "samples")


def test_every_builtin_evaluator_matches_the_contract():
    from elfkit.components.evaluators import Evaluator
    from elfkit.config import ComponentConfig
    from elfkit.registry import build_registry

    reg = build_registry(entry_points=False)
    assert set(reg.names("evaluator")) >= {"gen-ppl", "entropy", "bleu", "rouge"}
    for name in ("gen-ppl", "entropy", "bleu", "rouge"):
        spec = reg.get("evaluator", name)
        assert issubclass(spec.config, ComponentConfig)
        ev = spec.build()                      # building loads nothing (judges load on first call)
        assert isinstance(ev, Evaluator) and isinstance(ev.needs_references, bool)


@requires_wheel("sacrebleu")
def test_copy_source_row_scores_sources_against_references():
    from elfkit.pipeline.evaluate import evaluate_samples
    from elfkit.records import SampleRecord

    samples = [SampleRecord(text="a b c d", token_ids=[], seed=0, index=0, source="a b c e", reference="a b c d"),
               SampleRecord(text="x y z w", token_ids=[], seed=0, index=1, source="x y z w", reference="x y z w")]
    rows = evaluate_samples(samples, [("bleu", BLEUEvaluator(BLEUConfig()))])
    by_row = {r.row: r for r in rows}
    assert by_row["samples"].mean == pytest.approx(100.0)
    import sacrebleu
    expected = sacrebleu.corpus_bleu(["a b c e", "x y z w"], [["a b c d", "x y z w"]], lowercase=True,
                                     use_effective_order=True).score
    assert by_row["copy source"].mean == pytest.approx(expected)


@requires_wheel("sacrebleu")
def test_other_reference_row_scores_the_next_pairs_reference():
    from elfkit.pipeline.evaluate import evaluate_samples
    from elfkit.records import SampleRecord

    refs = ["the lord spake unto moses", "and god said let there be light", "in the beginning was the word"]
    samples = [SampleRecord(text=r, token_ids=[], seed=0, index=i, source=f"src {i}", reference=r)
               for i, r in enumerate(refs)]
    rows = {r.row: r for r in evaluate_samples(samples, [("bleu", BLEUEvaluator(BLEUConfig()))])}
    import sacrebleu
    expected = sacrebleu.corpus_bleu([refs[1], refs[2], refs[0]], [refs], lowercase=True,
                                     use_effective_order=True).score
    assert rows["other reference"].mean == pytest.approx(expected)
    assert rows["other reference"].mean < rows["samples"].mean == pytest.approx(100.0)
