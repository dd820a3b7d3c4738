"""Data path: collation, tokenizers, the embedding step (label drop, latent cache), TrainData.

Typical use (what the pipeline does)::

    dataset = registry.build("dataset", recipe.data.name, recipe.data.config)
    embedder = registry.build("embedder", recipe.embedder.name, recipe.embedder.config)
    splits = dataset.load(embedder.tokenizer, cache_dir)           # DataSplits
    data = make_train_data(splits, embedder, cache_dir=cache_dir)  # TrainData
    for batch in data.batches(epoch, batch_size=b, seed=s, rank=r, world_size=w):
        x0 = data.embed(batch.to(device))                          # (B, S, D)
"""

from elfkit.data.collate import Collator, loss_mask, pairwise_mask, sequence_masks
from elfkit.data.embedding import LatentCache, drop_condition_attention, embed_batch
from elfkit.data.splits import DataSplits, EvalPair
from elfkit.data.train_data import ExampleTrainData, make_train_data, shard_indices

__all__ = [
    "Collator", "DataSplits", "EvalPair", "ExampleTrainData", "LatentCache", "drop_condition_attention",
    "embed_batch", "loss_mask", "make_train_data", "pairwise_mask", "sequence_masks", "shard_indices",
]
