"""Training: the train stage (``stage``), ``fit`` (``loop``; single process or torchrun DDP/FSDP2),
optimisers, EMA, the embedding step and training data.

Nothing is imported here: sampling uses ``latents`` alone and should not pay for the training
loop's imports (``torch.distributed.checkpoint`` costs ~0.6 s).
"""
