"""``fit``: train a backbone with a recipe's objective, resumably, on one process or under torchrun.

One optimiser step = ``grad_accum`` micro-batches per rank of ``batch_size/world_size`` rows;
the LR follows ``blr·batch_size·grad_accum/256``. Every micro-batch draws its noise from a
generator seeded by (recipe seed, step, global micro-batch index ``a·world_size + rank``), so
a resumed run continues exactly where it stopped, and 2 ranks × 1 micro-batch draw the
same numbers as 1 rank × 2 accumulated micro-batches.

Stops cleanly (checkpoint, then return) at ``train.steps``, on SIGTERM or a first Ctrl-C
(a second Ctrl-C aborts at once), and after ``train.max_minutes``. Rerunning the same call
resumes from the run directory's newest checkpoint (``CheckpointDir.latest``: what ``checkpoints/last``
names, or the newest intact step file if ``last`` is missing; ``resume_from`` picks one); a
finished run returns immediately. Log records past the resumed step are dropped, so the log
never repeats a step.
"""

from __future__ import annotations

import math
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from rich.console import Console
from rich.markup import escape
from torch import nn

from elfkit.contracts import SupportsActivationCheckpointing, TrainData
from elfkit.errors import CheckpointError, DataError, RecipeError
from elfkit.pipeline.build import Components
from elfkit.pipeline.checkpoint import Checkpoint
from elfkit.pipeline.interrupts import note_signal
from elfkit.pipeline.rundir import RunDir
from elfkit.pipeline.train import distributed as dist_utils
from elfkit.pipeline.train import state as train_state
from elfkit.pipeline.train.ema import EMA
from elfkit.pipeline.train.monitor import Monitor
from elfkit.pipeline.train.optimizers import build_optimizer, build_scheduler, clip_grad_norm, resolve_lr
from elfkit.recipe.load import resolved_dict
from elfkit.records import Batch

if TYPE_CHECKING:
    from elfkit.contracts import BackboneModule


@dataclass(frozen=True)
class TrainResult:
    """``checkpoint``: the ``checkpoints/last`` pointer or the file resumed from (None if nothing
    was saved); ``steps``: optimiser steps done in total; ``final_loss``: mean loss of the last
    step; ``tokens_per_s``: global throughput of this invocation; ``stopped``: 'completed',
    'already-done', 'interrupted' or 'time-limit'."""

    checkpoint: Path | None
    steps: int
    final_loss: float | None
    tokens_per_s: float
    stopped: str


def micro_seed(seed: int, step: int, micro_index: int) -> int:
    """Seed of one micro-batch's generator (well mixed; independent of world size and accumulation split)."""
    return int(np.random.SeedSequence([seed, step, micro_index]).generate_state(1, dtype=np.uint64)[0] >> 1)


class _StopFlag:
    """SIGTERM / first SIGINT → finish the step, checkpoint, return. Second SIGINT → KeyboardInterrupt."""

    def __init__(self) -> None:
        self.reason: str | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _StopFlag:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        note_signal(signum)   # train_stage reports which signal stopped the run
        if signum == signal.SIGINT and self.reason == "interrupted":
            raise KeyboardInterrupt
        self.reason = "interrupted"

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _stream(data: TrainData, progress: train_state.Progress, *, batch_size: int, seed: int,
            info: dist_utils.DistInfo) -> Iterator[Batch]:
    """This rank's micro-batches from the saved position on, across epochs (updates ``progress``)."""
    while True:
        it = data.batches(progress.epoch, batch_size=batch_size, seed=seed, rank=info.rank,
                          world_size=info.world_size)
        yielded = False
        for b in islice(it, progress.batches_in_epoch, None):
            yielded = True
            progress.batches_in_epoch += 1
            yield b
        if not yielded and progress.batches_in_epoch == 0:
            raise DataError(f"the training data yielded no batch of {batch_size} rows for rank {info.rank} "
                            f"of {info.world_size}; use a smaller train.batch_size or more data")
        progress.epoch += 1
        progress.batches_in_epoch = 0


def _micro_batch(train: Any, info: dist_utils.DistInfo) -> int:
    if train.batch_size % info.world_size:
        raise RecipeError(f"train.batch_size={train.batch_size} is the global batch and must be divisible by "
                          f"the number of processes ({info.world_size})")
    return train.batch_size // info.world_size


def fit(components: Components, data: TrainData, run: RunDir, *, console: Console | None = None,
        resume_from: Path | None = None) -> TrainResult:
    """Train ``components.backbone`` per ``components.recipe.train``; resumes from ``run`` (or from the
    checkpoint file ``resume_from``) if possible."""
    info = dist_utils.setup()
    try:
        return _Trainer(components, data, run, info, console, resume_from).run()
    finally:
        dist_utils.teardown(info)


class _Trainer:
    def __init__(self, c: Components, data: TrainData, run: RunDir, info: dist_utils.DistInfo,
                 console: Console | None, resume_from: Path | None = None) -> None:
        self.c, self.data, self.rundir, self.info, self.console = c, data, run, info, console
        self.resume_from = resume_from
        self.resumed_path: Path | None = None
        self.train = c.recipe.train
        self.micro = _micro_batch(self.train, info)
        dist_utils.check_parallel(self.train.parallel, self.train.muon.implementation, info)
        self.device = info.device
        self.raw: BackboneModule = c.backbone.to(self.device)
        # a trainable embedder is also an nn.Module (contracts.Embedder); a frozen one may be either
        emb = c.embedder if isinstance(c.embedder, nn.Module) else None
        self.embedder_trainable = bool(getattr(c.embedder, "trainable", False))
        if emb is not None:
            emb.to(self.device)
            if not self.embedder_trainable:
                emb.requires_grad_(False).eval()   # never holds gradients or optimiser state
        if self.train.activation_checkpointing:
            if not isinstance(self.raw, SupportsActivationCheckpointing):
                raise RecipeError("train.activation_checkpointing: true, but this backbone has no "
                                  "enable_activation_checkpointing(); set it to false")
            self.raw.enable_activation_checkpointing()
        # A table tied to the unembedding is a backbone parameter: it trains, averages (EMA),
        # syncs (DDP) and checkpoints with the backbone; only the embedder's other trainable
        # parameters ("extra") are handled here on their own.
        own = {id(p) for p in self.raw.parameters()}
        extra = [(n, p) for n, p in emb.named_parameters(prefix="embedder") if id(p) not in own] if (
            self.embedder_trainable and emb is not None) else []
        tied = emb is not None and any(id(p) in own for p in emb.parameters())
        if (tied or extra) and info.distributed and self.train.parallel == "fsdp":
            raise RecipeError("train.parallel: fsdp does not support a trainable embedder (it would shard a table "
                              "tied to the unembedding apart from the embedder, and cannot checkpoint an untied "
                              "one's optimiser state); use train.parallel: ddp")
        self.model = dist_utils.wrap(self.raw, self.train.parallel, info)
        if self.train.compile:
            self.raw.compile()
        self.extra_params = [p for _, p in extra]
        # the embedder when it has trainable parameters of its own (untied): optimised, averaged and saved here
        self.own_embedder = emb if extra else None
        self.optim_view = (train_state.ParamView(self.raw, {"embedder": self.own_embedder})
                           if self.own_embedder is not None else None)
        self.optimizer = build_optimizer(self.raw, self.train, extra=extra)
        self.scheduler = build_scheduler(self.optimizer, self.train)
        self.ema = EMA(self.raw, self.train.ema_decay)
        # Sampling reads EMA weights: an untied trainable embedder gets its own EMA so the
        # condition latents come from the same average as the backbone (saved as "embedder_ema").
        self.embedder_ema = EMA(self.own_embedder, self.train.ema_decay) if self.own_embedder is not None else None
        self.progress = train_state.Progress()
        self.generator = torch.Generator(device=self.device)

    # ------------------------------------------------------------------ checkpoints
    def _checkpoint(self) -> Checkpoint | None:
        """This run as a checkpoint (rank 0; None on other ranks, which only join the gather)."""
        model_sd, optim_sd = train_state.gather_training_state(self.model, self.optimizer, optim_model=self.optim_view)
        ema_sd = self.ema.state_dict(self.raw)
        if not self.info.is_main:
            return None
        c = self.c
        checkpoint = Checkpoint(
            recipe=resolved_dict(c.recipe), model=model_sd, step=self.progress.step, ema=ema_sd,
            optimizer=optim_sd, scheduler=self.scheduler.state_dict(), epoch=self.progress.epoch,
            batches_in_epoch=self.progress.batches_in_epoch, world_size=self.info.world_size,
            micro_batch=self.micro, loss=self.progress.loss, rng=train_state.rng_state(self.device),
            tokenizer=getattr(getattr(c.embedder, "tokenizer", None), "name", None))
        if self.own_embedder is not None and self.embedder_ema is not None:   # untied trainable embedder
            checkpoint.embedder = self.own_embedder.state_dict()               # (a tied table is in model/ema)
            checkpoint.embedder_ema = self.embedder_ema.state_dict(self.own_embedder)
        return checkpoint

    def save(self) -> Path:
        checkpoint = self._checkpoint()
        if checkpoint is not None:
            self.rundir.checkpoints.write(checkpoint, self.train.keep_checkpoints)
        dist_utils.barrier(self.info)
        return self.rundir.checkpoints.last

    def resume(self) -> bool:
        found = self.rundir.checkpoints.latest(self.resume_from)
        if found is None:
            return False
        saved, self.resumed_path = found.checkpoint, found.path
        if found.note and self.info.is_main and self.console is not None:
            self.console.print(f"[yellow]train: {escape(found.note)}")
        if saved.ema is None or saved.optimizer is None or saved.scheduler is None or saved.rng is None:
            raise CheckpointError(f"{found.path} holds weights but no training state "
                                  "(EMA, optimizer, scheduler, RNG); training cannot resume from it")
        train_state.restore_training_state(self.model, self.optimizer, saved, optim_model=self.optim_view)
        self.ema.load_state_dict(saved.ema)
        self.scheduler.load_state_dict(saved.scheduler)
        if self.own_embedder is not None and self.embedder_ema is not None and saved.embedder is not None:
            self.own_embedder.load_state_dict(saved.embedder)
            if saved.embedder_ema is not None:
                self.embedder_ema.load_state_dict(saved.embedder_ema)
        p = train_state.Progress(saved.step, saved.epoch, saved.batches_in_epoch, saved.loss)
        old_rows = saved.world_size * (saved.micro_batch if saved.micro_batch is not None else self.micro)
        if old_rows != self.info.world_size * self.micro:   # re-express the data position in this layout
            p.batches_in_epoch = p.batches_in_epoch * old_rows // (self.info.world_size * self.micro)
        self.progress = p
        if self.info.world_size == 1 and saved.world_size == 1:
            train_state.set_rng_state(saved.rng, self.device)
        return True

    # ------------------------------------------------------------------ one optimiser step
    def _step(self, stream: Iterator[Batch]) -> tuple[dict[str, float], int]:
        c, train, info = self.c, self.train, self.info
        self.optimizer.zero_grad(set_to_none=True)
        logs: dict[str, float] = {}
        tokens = 0
        amp = torch.autocast(self.device.type, dtype=torch.bfloat16) if train.precision == "bf16" else nullcontext()
        for a in range(train.grad_accum):
            batch = next(stream).to(self.device)
            with torch.no_grad() if not self.embedder_trainable else nullcontext():
                x0 = self.data.embed(batch).to(self.device)
            tokens += x0.shape[0] * x0.shape[1]
            self.generator.manual_seed(micro_seed(c.recipe.seed, self.progress.step, a * info.world_size + info.rank))
            with dist_utils.grad_sync(self.model, a == train.grad_accum - 1), amp:
                out = c.objective(self.model, batch, x0, target=c.target, time=c.time,
                                  generator=self.generator)
                (out.loss / train.grad_accum).backward()
            for k, v in out.logs.items():
                logs[k] = logs.get(k, 0.0) + v / train.grad_accum
        if self.extra_params and info.distributed:   # trainable embedder sits outside DDP
            for p in self.extra_params:
                if p.grad is not None:
                    torch.distributed.all_reduce(p.grad, op=torch.distributed.ReduceOp.AVG)
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        logs["grad_norm"] = float(clip_grad_norm(params, train.clip_grad))
        logs["lr"] = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        self.scheduler.step()
        self.ema.update(self.raw)
        if self.own_embedder is not None and self.embedder_ema is not None:
            self.embedder_ema.update(self.own_embedder)
        self.progress.step += 1
        return logs, tokens * info.world_size

    # ------------------------------------------------------------------ the loop
    def run(self) -> TrainResult:
        train, info = self.train, self.info
        resumed = self.resume()
        if info.is_main:   # steps logged after the checkpoint we resume from are redone: drop them
            self.rundir.trim_train_log(self.progress.step)
        if self.progress.step >= train.steps:
            return TrainResult(self.resumed_path, self.progress.step, self.progress.loss, 0.0,
                               "already-done")
        if not resumed or info.world_size > 1:   # dropout etc.: a per-rank stream, reproducible from the step
            torch.manual_seed(micro_seed(self.c.recipe.seed, self.progress.step, 10_000 + info.rank))
        self.raw.train(True)
        stream = _stream(self.data, self.progress, batch_size=self.micro, seed=self.c.recipe.seed, info=info)
        monitor = Monitor(self.rundir.train_log, train.steps, self.progress.step, enabled=info.is_main,
                          console=self.console)
        if info.is_main:
            monitor.log({"event": "resume" if resumed else "start", "step": self.progress.step,
                         "lr": resolve_lr(train), "world_size": info.world_size, "micro_batch": self.micro})
        start = last_log = time.perf_counter()
        tokens_total = tokens_window = 0
        stopped, last_ckpt = "completed", None
        try:
            with _StopFlag() as flag:
                while self.progress.step < train.steps:
                    logs, tokens = self._step(stream)
                    tokens_total += tokens
                    tokens_window += tokens
                    self.progress.loss = logs["loss"]
                    now = time.perf_counter()
                    reason = flag.reason
                    if reason is None and train.max_minutes is not None and now - start > 60 * train.max_minutes:
                        reason = "time-limit"
                    stop = dist_utils.any_rank(reason is not None, info)
                    step = self.progress.step
                    if step % train.log_every == 0 or step == train.steps or stop:
                        vals = dist_utils.mean_across(list(logs.values()), info)
                        logs = dict(zip(logs, vals, strict=True))
                        tps = tokens_window / max(now - last_log, 1e-9)
                        self.progress.loss = logs["loss"]
                        monitor.log({"step": step, "epoch": self.progress.epoch, **logs, "tokens_per_s": tps,
                                     "elapsed_s": now - start})
                        monitor.update(step, logs["loss"], tps)
                        last_log, tokens_window = now, 0
                    else:
                        monitor.update(step, None if math.isnan(logs["loss"]) else logs["loss"], None)
                    if stop or step % train.checkpoint_every == 0 or step == train.steps:
                        last_ckpt = self.save()
                    if stop:
                        stopped = reason or "interrupted"
                        break
        finally:
            monitor.close()
        elapsed = time.perf_counter() - start
        if info.is_main:
            monitor.log({"event": stopped, "step": self.progress.step})
        return TrainResult(last_ckpt, self.progress.step, self.progress.loss, tokens_total / max(elapsed, 1e-9),
                           stopped)
