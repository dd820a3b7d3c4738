"""Prepare data: the dataset, tokenised through the cache, cut to the recipe's training subset.

Training and conditional sampling both read the dataset, and both must find the same cache
and the same subset, so the cache location and the subset rule live here once.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import torch
from rich.console import Console
from rich.markup import escape

from elfkit.components.datasets.base import default_cache_dir
from elfkit.components.datasets.splits import DataSplits
from elfkit.errors import DataError
from elfkit.fileio import atomic_write_text
from elfkit.pipeline.build import Components
from elfkit.pipeline.interrupts import interruptible
from elfkit.pipeline.rundir import RunDir
from elfkit.recipe.schema import Recipe


def data_cache_dir(recipe: Recipe) -> Path:
    """The dataset's ``cache_dir``, else the shared elfkit cache."""
    return Path(getattr(recipe.data.config, "cache_dir", None) or default_cache_dir())


@interruptible("data preparation", lambda args: "")   # the train stage around it says what was kept
def prepare_data(components: Components, run: RunDir, console: Console | None = None) -> DataSplits:
    """Load and tokenise the dataset (cached), write held-out reference texts, return splits."""
    console = console or Console(stderr=True)
    dataset = components.dataset
    if dataset is None:
        raise DataError("prepare_data needs the dataset: build the components with with_dataset=True")
    cfg = components.recipe.data.config
    cache = data_cache_dir(components.recipe)
    t0 = time.perf_counter()
    with console.status(f"preparing data '{escape(components.recipe.data.name)}'"):
        splits = dataset.load(components.embedder.tokenizer, cache)
    limit = getattr(cfg, "max_train_examples", None)
    if limit is not None and splits.sized and len(splits.train) > limit:
        splits = subset_train(splits, limit, seed=components.recipe.seed)
    if splits.sized and len(splits.train) == 0:
        raise DataError(f"dataset '{components.recipe.data.name}' has no training examples "
                        f"(check its files and max_length={getattr(cfg, 'max_length', '?')})")
    n = len(splits.train) if splits.sized else "streaming"
    console.print(f"data: {n} training sequences ({time.perf_counter() - t0:.1f}s)")
    texts = splits.eval_texts or [p.reference for p in splits.eval_pairs]
    if texts and not run.references.exists():
        atomic_write_text(run.references, "".join(json.dumps({"text": t}) + "\n" for t in texts))
    return splits


def subset_train(splits: DataSplits, limit: int, seed: int) -> DataSplits:
    """A fixed random subset of the training examples (the fingerprint records it)."""
    g = torch.Generator().manual_seed(seed)
    idx = sorted(torch.randperm(len(splits.train), generator=g)[:limit].tolist())
    train = splits.train.select(idx) if hasattr(splits.train, "select") else [splits.train[i] for i in idx]
    return replace(splits, train=train, fingerprint=f"{splits.fingerprint}-subset{limit}-seed{seed}")
