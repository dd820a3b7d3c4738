"""Built-in evaluators: ``gen-ppl``, ``entropy``, ``bleu``, ``rouge`` (see docs/evaluation.md)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from elfkit.components.evaluators.base import Evaluator
from elfkit.components.evaluators.bleu import BLEUConfig, BLEUEvaluator
from elfkit.components.evaluators.entropy import EntropyConfig, EntropyEvaluator
from elfkit.components.evaluators.gen_ppl import GenPPLConfig, GenPPLEvaluator
from elfkit.components.evaluators.rouge import ROUGEConfig, ROUGEEvaluator
from elfkit.hookspecs import hookimpl

if TYPE_CHECKING:
    from elfkit.registry import ComponentRegistrar

__all__ = ["Evaluator", "GenPPLEvaluator", "EntropyEvaluator", "BLEUEvaluator", "ROUGEEvaluator"]


@hookimpl
def elfkit_register_components(registry: ComponentRegistrar) -> None:
    registry.add("evaluator", "gen-ppl", GenPPLEvaluator, GenPPLConfig,
                 "Gen. PPL under a judge LM (default: offline SmolLM2) + entropy of its token ids")
    registry.add("evaluator", "entropy", EntropyEvaluator, EntropyConfig,
                 "Mean per-sample unigram entropy over GPT-2 BPE ids (no model)")
    registry.add("evaluator", "bleu", BLEUEvaluator, BLEUConfig, "sacreBLEU corpus BLEU, lowercased")
    registry.add("evaluator", "rouge", ROUGEEvaluator, ROUGEConfig, "ROUGE-1/2/L F1 with stemming")
