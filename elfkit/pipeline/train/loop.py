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

The divergence guard (:mod:`.guard`) watches every step: a non-finite loss or gradient norm
skips the update, too many in a row or a loss that stays far above its running median stop
the run as 'diverged' without saving, and a checkpoint holding a non-finite value is never
written. Periodic checkpoints wait while the loss is spiking, so the last one stays good.
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
from elfkit.pipeline.train.determinism import deterministic_kernels, environment_facts
from elfkit.pipeline.train.ema import EMA
from elfkit.pipeline.train.guard import DivergenceGuard, Verdict, divergence_advice, first_non_finite
from elfkit.pipeline.train.monitor import Monitor
from elfkit.pipeline.train.optimizers import build_optimizer, build_scheduler, clip_grad_norm, resolve_lr
from elfkit.pipeline.train.tracking import open_trackers
from elfkit.recipe.load import resolved_dict
from elfkit.records import Batch

if TYPE_CHECKING:
    from elfkit.contracts import BackboneModule


@dataclass(frozen=True)
class TrainResult:
    """``checkpoint``: the ``checkpoints/last`` pointer or the file resumed from (None if nothing
    was saved); ``steps``: optimiser steps done in total; ``final_loss``: mean loss of the last
    healthy step; ``tokens_per_s``: global throughput of this invocation; ``stopped``: 'completed',
    'already-done', 'interrupted', 'time-limit' or 'diverged' (then ``message`` says why, where
    the last good checkpoint is and what to try); ``wall_s``, ``skipped_steps`` (non-finite, not
    applied) and ``spike_steps``: this invocation's."""

    checkpoint: Path | None
    steps: int
    final_loss: float | None
    tokens_per_s: float
    stopped: str
    wall_s: float = 0.0
    skipped_steps: int = 0
    spike_steps: int = 0
    message: str = ""


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
        with deterministic_kernels(components.recipe.train.deterministic):
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
        self.guard = DivergenceGuard(self.train.max_bad_steps, self.train.spike_factor, self.train.spike_window,
                                     self.train.max_spike_steps)
        self.last_good: tuple[int, Path] | None = None   # (step, file) of the newest checkpoint written or resumed

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

    def save(self) -> Path | str:
        """Write a checkpoint; returns the ``last`` pointer, or (nothing written) the key of a non-finite value."""
        checkpoint = self._checkpoint()
        bad = None
        if checkpoint is not None:
            bad = first_non_finite({"model": checkpoint.model, "ema": checkpoint.ema,
                                    "optimizer": checkpoint.optimizer, "embedder": checkpoint.embedder,
                                    "embedder_ema": checkpoint.embedder_ema})
            if bad is None:
                self.rundir.checkpoints.write(checkpoint, self.train.keep_checkpoints)
                self.last_good = (checkpoint.step, self.rundir.checkpoints.step_file(checkpoint.step))
        dist_utils.barrier(self.info)
        if dist_utils.any_rank(bad is not None, self.info):
            return bad or "a tensor on another rank"
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
        self.last_good = (saved.step, found.path)
        if self.info.world_size == 1 and saved.world_size == 1:
            train_state.set_rng_state(saved.rng, self.device)
        return True

    # ------------------------------------------------------------------ one optimiser step
    def _step(self, stream: Iterator[Batch]) -> tuple[dict[str, float], int, Verdict]:
        """One optimiser step, unless the guard rejects it (then no optimiser, scheduler or EMA update)."""
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
        logs["grad_norm"] = float(clip_grad_norm(params, train.clip_grad))   # global: equal on every rank
        logs["lr"] = self.optimizer.param_groups[0]["lr"]
        loss = dist_utils.mean_across([logs["loss"]], info)[0]              # NaN on any rank → NaN
        verdict = self.guard.observe(self.progress.step + 1, loss, logs["grad_norm"])
        if verdict.kind in ("ok", "spike"):
            self.optimizer.step()
            self.scheduler.step()
            self.ema.update(self.raw)
            if self.own_embedder is not None and self.embedder_ema is not None:
                self.embedder_ema.update(self.own_embedder)
        self.progress.step += 1
        return logs, tokens * info.world_size, verdict

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
            train_state.seed_global_streams(micro_seed(self.c.recipe.seed, self.progress.step, 10_000 + info.rank))
        self.raw.train(True)
        stream = _stream(self.data, self.progress, batch_size=self.micro, seed=self.c.recipe.seed, info=info)
        trackers = open_trackers(train.log_to, self.rundir.root, resolved_dict(self.c.recipe), enabled=info.is_main)
        monitor = Monitor(self.rundir.train_log, train.steps, self.progress.step, enabled=info.is_main,
                          console=self.console, trackers=trackers)
        if info.is_main:
            monitor.log({"event": "resume" if resumed else "start", "step": self.progress.step,
                         "lr": resolve_lr(train), "world_size": info.world_size, "micro_batch": self.micro,
                         "environment": environment_facts(self.device, info.world_size)})
        start = last_log = time.perf_counter()
        start_step = self.progress.step
        tokens_total = tokens_window = 0
        stopped, last_ckpt, diverged = "completed", None, ""
        ckpt_pending = False
        try:
            with _StopFlag() as flag:
                while self.progress.step < train.steps:
                    logs, tokens, verdict = self._step(stream)
                    tokens_total += tokens
                    tokens_window += tokens
                    step = self.progress.step
                    if verdict.kind == "stop":
                        stopped, diverged = "diverged", verdict.reason
                        break
                    self._report_verdict(monitor, step, logs, verdict)
                    if verdict.kind != "skip":
                        self.progress.loss = logs["loss"]
                    now = time.perf_counter()
                    reason = flag.reason
                    if reason is None and train.max_minutes is not None and now - start > 60 * train.max_minutes:
                        reason = "time-limit"
                    stop = dist_utils.any_rank(reason is not None, info)
                    if verdict.kind != "skip" and (step % train.log_every == 0 or step == train.steps or stop):
                        vals = dist_utils.mean_across(list(logs.values()), info)
                        logs = dict(zip(logs, vals, strict=True))
                        tps = tokens_window / max(now - last_log, 1e-9)
                        self.progress.loss = logs["loss"]
                        monitor.log({"step": step, "epoch": self.progress.epoch, **logs, "tokens_per_s": tps,
                                     "elapsed_s": now - start})
                        monitor.update(step, logs["loss"], tps)
                        last_log, tokens_window = now, 0
                    else:
                        monitor.update(step, self.progress.loss, None)
                    # a periodic checkpoint waits while the loss is spiking or steps are skipped
                    ckpt_pending = ckpt_pending or step % train.checkpoint_every == 0
                    if stop or step == train.steps or (ckpt_pending and not self.guard.spiking):
                        saved = self.save()
                        ckpt_pending = False
                        if isinstance(saved, str):
                            stopped = "diverged"
                            diverged = f"the weights hold a non-finite value ({saved}); that checkpoint was not written"
                            break
                        last_ckpt = saved
                    if stop:
                        stopped = reason or "interrupted"
                        break
            elapsed = time.perf_counter() - start
            message = self._diverged_message(self.progress.step, diverged) if diverged else ""
            result = TrainResult(last_ckpt, self.progress.step, self.progress.loss,
                                 tokens_total / max(elapsed, 1e-9), stopped, wall_s=elapsed,
                                 skipped_steps=self.guard.bad_steps, spike_steps=self.guard.spike_steps,
                                 message=message)
            monitor.log({"event": stopped, "step": self.progress.step, "steps_done": self.progress.step - start_step,
                         "wall_s": round(elapsed, 3), "tokens": tokens_total, "tokens_per_s": result.tokens_per_s,
                         "skipped_steps": self.guard.bad_steps, "spike_steps": self.guard.spike_steps,
                         **({"reason": diverged, "last_good_checkpoint": str(self.last_good[1]) if self.last_good
                             else None} if diverged else {})})
        finally:
            monitor.close()
        return result

    def _report_verdict(self, monitor: Monitor, step: int, logs: dict[str, float], verdict: Verdict) -> None:
        """A skipped step and the first step of each spike: a train_log event and a console warning."""
        loss, norm = logs["loss"], logs["grad_norm"]
        if verdict.kind == "skip":
            monitor.log({"event": "skip", "step": step, "loss": _json_float(loss), "grad_norm": _json_float(norm)})
            monitor.warn(f"step {step}: non-finite loss {loss} or gradient norm {norm}; step skipped (no update), "
                         f"{self.guard.consecutive_bad}/{self.train.max_bad_steps} in a row")
        elif verdict.kind == "spike" and self.guard.consecutive_spikes == 1 and verdict.median is not None:
            monitor.log({"event": "spike", "step": step, "loss": loss, "median": verdict.median,
                         "factor": self.train.spike_factor})
            monitor.warn(f"step {step}: loss spike {loss:.4g} is {loss / verdict.median:.1f}× its running median "
                         f"{verdict.median:.4g} (train.spike_factor {self.train.spike_factor:g}); the run is "
                         "diverging if it stays there")

    def _diverged_message(self, step: int, reason: str) -> str:
        train = self.train
        if self.last_good is not None:
            good = f"The last good checkpoint is {self.last_good[1]} (step {self.last_good[0]}), kept intact."
        else:
            good = f"No checkpoint was written before it (train.checkpoint_every: {train.checkpoint_every})."
        return (f"training diverged at step {step}: {reason}. {good} "
                + divergence_advice(resolve_lr(train), train.clip_grad, train.precision, train.warmup_steps)
                + " Run the changed recipe with a new --out directory.")


def _json_float(value: float) -> float | str:
    """A float as JSON allows it: NaN and ±inf as the strings 'nan', 'inf', '-inf'."""
    return value if math.isfinite(value) else str(value)
