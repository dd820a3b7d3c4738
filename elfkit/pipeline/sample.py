"""Sampling from a trained model: the sample stage of a run and ``elfkit sample``.

Both generate the same records from a :class:`~elfkit.pipeline.trained.Trained` model; the
stage also records a fingerprint of what it sampled with (sample settings, checkpoint, engine,
data), so a run re-samples only when one of those changed.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from elfkit.components.datasets.collate import Collator
from elfkit.components.datasets.splits import EvalPair
from elfkit.contracts import Dataset, ModelRunner
from elfkit.errors import DataError
from elfkit.fileio import atomic_write_text
from elfkit.generation import Condition, DenoiseStep, decode_tokens, generate, postprocess
from elfkit.pipeline.build import sampling_time
from elfkit.pipeline.checkpoint import run_root_of
from elfkit.pipeline.interrupts import interruptible
from elfkit.pipeline.prepare import data_cache_dir
from elfkit.pipeline.rundir import RunDir, fingerprint
from elfkit.pipeline.train.latents import embed_batch
from elfkit.pipeline.trained import Trained, load_trained
from elfkit.recipe.load import resolved_dict
from elfkit.recipe.schema import Recipe
from elfkit.records import SampleRecord

DENOISING_FILE = "denoising.json"
"""One sample's decoded x̂ along the sampling path, beside samples.jsonl (the report shows it)."""
DENOISING_FRAMES = 6


@dataclass(frozen=True)
class DenoisingFrame:
    """The first sample's x̂ at one denoiser call, decoded: ``call`` of ``calls``, at time ``t``."""

    call: int
    calls: int
    t: float
    text: str


def frame_indices(calls: int, frames: int = DENOISING_FRAMES) -> list[int]:
    """``frames`` call numbers spread evenly over 0 … calls−1, first and last included."""
    if calls <= frames:
        return list(range(calls))
    return sorted({round(i * (calls - 1) / (frames - 1)) for i in range(frames)})


def write_denoising(path: Path, frames: Sequence[DenoisingFrame]) -> None:
    atomic_write_text(path, json.dumps([asdict(f) for f in frames], ensure_ascii=False, indent=1) + "\n")


def read_denoising(path: Path) -> list[DenoisingFrame]:
    """The frames in ``path``; [] when it is missing or not what :func:`write_denoising` wrote."""
    try:
        return [DenoisingFrame(**row) for row in json.loads(path.read_text(encoding="utf-8"))]
    except (OSError, ValueError, TypeError):
        return []


def _sampling_fingerprint(recipe: Recipe, checkpoint: Path, step: int, engine: Path | None) -> str:
    r = resolved_dict(recipe)
    return fingerprint({"sample": r["sample"], "checkpoint": str(Path(checkpoint).resolve()), "step": step,
                        "engine": str(engine) if engine else None, "data": r["data"]})


def _runner(trained: Trained, engine: Path | None, device: torch.device) -> ModelRunner:
    if engine is not None:
        from elfkit.components.exporters import load_runner
        return load_runner(engine, device=device, registry=trained.components.registry)
    from elfkit.components.backbones import EagerRunner
    return EagerRunner(trained.components.backbone.to(device))


def _conditions(trained: Trained, dataset: Dataset) -> tuple[list[EvalPair], Collator] | None:
    """Held-out conditional examples in order (first ``num_samples``), with the collator that
    embeds their clean conditions; None when the dataset is not conditional."""
    splits = dataset.load(trained.components.embedder.tokenizer, data_cache_dir(trained.recipe))
    if not splits.conditional:
        return None
    if not splits.eval_pairs:
        raise DataError(f"dataset '{trained.recipe.data.name}' has no held-out pairs to condition on")
    return splits.eval_pairs[: trained.recipe.sample.num_samples], replace(splits.collator, label_drop_prob=0.0)


def generate_records(trained: Trained, *, engine: Path | None = None, console: Console | None = None,
                     device: str | torch.device = "cpu",
                     watch: list[DenoisingFrame] | None = None) -> list[SampleRecord]:
    """All samples for every seed in ``recipe.sample.seeds``.

    With ``watch`` (a list to fill), the first sample of the first seed is also decoded from its
    x̂ at :data:`DENOISING_FRAMES` denoiser calls spread over the path (a few extra decoder
    forwards of one row): text crystallising from noise.
    """
    console = console or Console(stderr=True)
    recipe, c = trained.recipe, trained.components
    s = recipe.sample
    registry = c.registry
    sampler = registry.build("sampler", s.sampler.name, s.sampler.config)
    guidance = registry.build("guidance", s.guidance.name, s.guidance.config)
    grid_time = sampling_time(recipe, registry, c)
    runner = _runner(trained, engine, torch.device(device))
    tok = c.embedder.tokenizer
    max_length = recipe.data.config.max_length
    conditions = None
    if getattr(recipe.data.config, "max_input_length", None) is not None:   # conditional task
        dataset = c.dataset
        if dataset is None:
            dataset = c.dataset = registry.build("dataset", recipe.data.name, recipe.data.config)
        conditions = _conditions(trained, dataset)
    total = s.num_samples if conditions is None else len(conditions[0])
    records: list[SampleRecord] = []
    columns = (TextColumn("[bold]sampling"), BarColumn(), MofNCompleteColumn(), TextColumn("seed {task.fields[seed]}"),
               TimeRemainingColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        for seed in s.seeds:
            task = progress.add_task("sample", total=total, seed=seed)
            gen = torch.Generator().manual_seed(seed)
            for start in range(0, total, s.batch_size):
                num = min(s.batch_size, total - start)
                condition, cond_len, gen_length, batch_pairs = None, None, None, None
                if conditions is not None:
                    pairs, collator = conditions
                    batch_pairs = pairs[start:start + num]
                    batch = collator([{"condition_input_ids": p.condition_ids, "input_ids": []} for p in batch_pairs])
                    with torch.inference_mode():
                        latents = embed_batch(c.embedder, batch)
                    condition = Condition.from_mask(latents, batch.cond_mask)
                    cond_len = condition.lengths
                    gen_length = max_length - collator.max_input_length
                seen: list[tuple[float, torch.Tensor]] = []

                def keep(step: DenoiseStep, seen: list[tuple[float, torch.Tensor]] = seen) -> None:
                    seen.append((float(step.t[0]), step.x_hat[:1].clone()))       # (1, S, D)
                first = watch is not None and seed == s.seeds[0] and start == 0
                out = generate(runner, c.target, sampler, grid_time, guidance, num=num, length=max_length,
                               generator=gen, condition=condition, device=device, on_step=keep if first else None)
                rows = postprocess(out.token_ids, tok.eos_id, tok.pad_id, cond_len=cond_len, gen_length=gen_length)
                if first and watch is not None and seen:
                    picked = frame_indices(len(seen))
                    with torch.inference_mode():
                        ids = decode_tokens(runner, guidance, torch.cat([seen[i][1] for i in picked]))
                    lens = None if cond_len is None else cond_len[:1].expand(len(picked))
                    texts = postprocess(ids, tok.eos_id, tok.pad_id, cond_len=lens, gen_length=gen_length)
                    watch.extend(DenoisingFrame(call=i, calls=len(seen), t=round(seen[i][0], 4), text=tok.decode(t))
                                 for i, t in zip(picked, texts, strict=True))
                for i, ids in enumerate(rows):
                    p = batch_pairs[i] if batch_pairs else None
                    records.append(SampleRecord(text=tok.decode(ids), token_ids=ids, seed=seed, index=start + i,
                                                source=p.source if p else None, reference=p.reference if p else None))
                progress.advance(task, num)
    return records


def write_samples(path: Path, records: Sequence[SampleRecord]) -> None:
    atomic_write_text(path, "".join(json.dumps(r.__dict__, ensure_ascii=False) + "\n" for r in records))


def _samples_kept(args: Mapping[str, Any]) -> str:
    return (f"No samples were written (samples are written once complete); the checkpoint {args['checkpoint']} "
            "is untouched. Rerun the same command to sample again (finished stages are skipped).")


@interruptible("sampling", _samples_kept)
def sample_stage(checkpoint: Path, run_dir: Path, recipe: Recipe, console: Console | None = None,
                 engine: Path | None = None) -> Path:
    """Write ``run_dir/samples.jsonl`` for ``recipe.sample`` (skipped when already done)."""
    console = console or Console(stderr=True)
    run = RunDir(Path(run_dir))
    trained = load_trained(checkpoint, plugin_files=recipe.plugins, sample=recipe.sample, evaluation=recipe.eval)
    fp = _sampling_fingerprint(trained.recipe, checkpoint, trained.step, engine)
    if run.is_done("sample", fp) and run.samples.exists():
        console.print(f"sample: already done ({escape(str(run.samples))})")
        return run.samples
    run.forget("evaluate", "report")
    t0 = time.perf_counter()
    frames: list[DenoisingFrame] = []
    records = generate_records(trained, engine=engine, console=console, watch=frames)
    write_samples(run.samples, records)
    write_denoising(run.root / DENOISING_FILE, frames)
    run.mark_done("sample", fp, n=len(records), seconds=round(time.perf_counter() - t0, 2))
    return run.samples


@interruptible("sampling", _samples_kept)
def sample_from_checkpoint(checkpoint: Path, overrides: Sequence[str], *, out_dir: Path | None = None,
                           engine: Path | None = None, plugin_files: Sequence[str] = (),
                           console: Console | None = None) -> Path:
    """``elfkit sample``: samples (and the recipe they came from) in ``out_dir``, by default
    ``samples/`` beside the checkpoint's run directory. The run's ``references.jsonl`` is copied
    along, so ``elfkit eval`` on the new directory has its real/shuffled reference rows."""
    console = console or Console(stderr=True)
    trained = load_trained(checkpoint, overrides, plugin_files=plugin_files)
    source = RunDir(run_root_of(checkpoint))
    run = RunDir(Path(out_dir) if out_dir else source.root / "samples")
    with run.lock("sample"):
        run.write_recipe(trained.recipe)
        frames: list[DenoisingFrame] = []
        records = generate_records(trained, engine=engine, console=console, watch=frames)
        write_samples(run.samples, records)
        write_denoising(run.root / DENOISING_FILE, frames)
        if source.references.is_file() and source.references.resolve() != run.references.resolve():
            shutil.copyfile(source.references, run.references)
    return run.samples
