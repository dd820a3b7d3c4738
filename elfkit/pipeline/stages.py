"""The stages of a run and the functions the CLI calls.

prepare data → train → sample → evaluate → report. Each stage writes into the run
directory and records a fingerprint of the settings it used (``stages.json``); rerunning
skips finished stages, resumes an interrupted training from its last checkpoint, and
redoes only the stages whose settings changed (e.g. a new sampler re-samples and
re-evaluates without retraining).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from elfkit.components.datasets.base import default_cache_dir
from elfkit.errors import CheckpointError, DataError, ElfkitError, RecipeError
from elfkit.fileio import atomic_write_text
from elfkit.pipeline.build import Components, build_components, sampling_time
from elfkit.pipeline.checkpoint import load_checkpoint
from elfkit.pipeline.rundir import RunDir, fingerprint, training_fingerprint
from elfkit.recipe.load import apply_overrides, dump_yaml, load_recipe, resolved_dict, validate_recipe
from elfkit.recipe.schema import Recipe
from elfkit.records import SampleRecord
from elfkit.registry import Registry, default_registry


def _console(console: Console | None) -> Console:
    return console or Console(stderr=True)


def _registry(recipe: Recipe) -> Registry:
    return default_registry(recipe.plugins)


def data_cache_dir(recipe: Recipe) -> Path:
    """The dataset's ``cache_dir``, else the shared elfkit cache."""
    return Path(getattr(recipe.data.config, "cache_dir", None) or default_cache_dir())


def write_recipe(run: RunDir, recipe: Recipe) -> dict[str, Any]:
    resolved = resolved_dict(recipe)
    run.root.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run.recipe, dump_yaml(resolved))
    return resolved


# ----------------------------------------------------------------------------------------
# prepare
# ----------------------------------------------------------------------------------------
def prepare_data(components: Components, run: RunDir, console: Console | None = None):
    """Load and tokenise the dataset (cached), write held-out reference texts, return splits."""
    console = _console(console)
    cfg = components.recipe.data.config
    cache = data_cache_dir(components.recipe)
    t0 = time.perf_counter()
    with console.status(f"preparing data '{components.recipe.data.name}'"):
        splits = components.dataset.load(components.embedder.tokenizer, cache)
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


def subset_train(splits, limit: int, seed: int):
    """A fixed random subset of the training examples (the fingerprint records it)."""
    g = torch.Generator().manual_seed(seed)
    idx = sorted(torch.randperm(len(splits.train), generator=g)[:limit].tolist())
    train = splits.train.select(idx) if hasattr(splits.train, "select") else [splits.train[i] for i in idx]
    return replace(splits, train=train, fingerprint=f"{splits.fingerprint}-subset{limit}-seed{seed}")


# ----------------------------------------------------------------------------------------
# train
# ----------------------------------------------------------------------------------------
def train_stage(recipe: Recipe, run_dir: Path, console: Console | None = None) -> Path:
    """Train (or resume, or skip if finished); returns the last checkpoint."""
    from elfkit.pipeline.train.data import make_train_data
    from elfkit.pipeline.train.loop import fit

    console = _console(console)
    run = RunDir(Path(run_dir))
    resolved = write_recipe(run, recipe)
    fp = training_fingerprint(resolved)
    run.check_same_training(resolved)
    if run.is_done("train", fp) and run.last_checkpoint.exists():
        console.print(f"train: already done ({run.last_checkpoint})")
        return run.last_checkpoint
    run.mark_done("train-started", fp)
    components = build_components(recipe, _registry(recipe))
    splits = prepare_data(components, run, console)
    data = make_train_data(splits, components.embedder, cache_dir=data_cache_dir(recipe))
    result = fit(components, data, run.root, console=console)
    if result.stopped == "interrupted":
        raise KeyboardInterrupt
    if result.stopped == "time-limit":   # a budgeted run: the budget is part of the recipe
        console.print(f"[yellow]train: time budget of {recipe.train.max_minutes} min reached at step "
                      f"{result.steps}/{recipe.train.steps}; continuing with this checkpoint")
    elif result.stopped not in ("completed", "already-done"):
        raise ElfkitError(f"training stopped early ({result.stopped}) at step {result.steps}; "
                          "rerun the same command to continue")
    if result.checkpoint is None:
        raise CheckpointError(f"training finished but wrote no checkpoint in {run.checkpoints}")
    run.mark_done("train", fp, checkpoint=str(result.checkpoint), steps=result.steps,
                  final_loss=result.final_loss, tokens_per_s=result.tokens_per_s)
    return result.checkpoint


# ----------------------------------------------------------------------------------------
# load a trained model
# ----------------------------------------------------------------------------------------
@dataclass
class Trained:
    recipe: Recipe
    components: Components
    step: int
    checkpoint: Path


def load_trained(checkpoint: Path, overrides: Sequence[str] = (), *, use_ema: bool | None = None,
                 plugin_files: Sequence[str] = (), with_dataset: bool = False) -> Trained:
    """Rebuild the components a checkpoint was trained with and load its (EMA) weights.

    ``overrides`` apply to the stored recipe (only sampling/eval keys should change).
    """
    payload = load_checkpoint(checkpoint)
    data = apply_overrides(payload["recipe"], list(overrides))
    registry = default_registry([*plugin_files, *data.get("plugins", [])])
    recipe = validate_recipe(data, source=f"{checkpoint} (stored recipe)", registry=registry)
    components = build_components(recipe, registry, with_dataset=with_dataset)
    ema = recipe.sample.use_ema if use_ema is None else use_ema
    state = payload.get("ema") if ema and payload.get("ema") else payload["model"]
    # An untied trainable embedder is saved on its own (EMA copy in "embedder_ema"). Load it
    # first: a table tied to the unembedding is the backbone's ``unembed_table``, so the
    # backbone state below sets it (with the same EMA/raw choice) for embedding and decoding.
    emb_state = payload.get("embedder_ema") if ema and payload.get("embedder_ema") else payload.get("embedder")
    if emb_state is not None and isinstance(components.embedder, torch.nn.Module):
        components.embedder.load_state_dict(emb_state)
    try:
        components.backbone.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{checkpoint}: weights do not match the recipe's backbone: "
                              f"{str(exc).splitlines()[0]}") from None
    components.backbone.eval()
    return Trained(recipe, components, int(payload["step"]), Path(checkpoint))


# ----------------------------------------------------------------------------------------
# sample
# ----------------------------------------------------------------------------------------
def _sampling_fingerprint(recipe: Recipe, checkpoint: Path, step: int, engine: Path | None) -> str:
    r = resolved_dict(recipe)
    return fingerprint({"sample": r["sample"], "checkpoint": str(Path(checkpoint).resolve()), "step": step,
                        "engine": str(engine) if engine else None, "data": r["data"]})


def _runner(trained: Trained, engine: Path | None, device: torch.device):
    if engine is not None:
        from elfkit.components.exporters import load_runner
        return load_runner(engine, device=device, registry=trained.components.registry)
    from elfkit.components.backbones import EagerRunner
    return EagerRunner(trained.components.backbone.to(device))


def _conditions(trained: Trained):
    """Held-out conditional examples in order (first ``num_samples``), with clean condition latents."""
    c = trained.components
    splits = c.dataset.load(c.embedder.tokenizer, data_cache_dir(trained.recipe))
    if not splits.conditional:
        return None, None
    if not splits.eval_pairs:
        raise DataError(f"dataset '{trained.recipe.data.name}' has no held-out pairs to condition on")
    return splits.eval_pairs[: trained.recipe.sample.num_samples], replace(splits.collator, label_drop_prob=0.0)


def generate_records(trained: Trained, *, engine: Path | None = None, console: Console | None = None,
                     device: str | torch.device = "cpu") -> list[SampleRecord]:
    """All samples for every seed in ``recipe.sample.seeds``."""
    from elfkit.generation import Condition, generate, postprocess
    from elfkit.pipeline.train.latents import embed_batch

    console = _console(console)
    recipe, c = trained.recipe, trained.components
    s = recipe.sample
    registry = c.registry
    sampler = registry.build("sampler", s.sampler.name, s.sampler.config)
    guidance = registry.build("guidance", s.guidance.name, s.guidance.config)
    grid_time = sampling_time(recipe, registry, c)
    runner = _runner(trained, engine, torch.device(device))
    tok = c.embedder.tokenizer
    max_length = recipe.data.config.max_length
    pairs, collator = None, None
    if getattr(recipe.data.config, "max_input_length", None) is not None:   # conditional task
        if c.dataset is None:
            c.dataset = registry.build("dataset", recipe.data.name, recipe.data.config)
        pairs, collator = _conditions(trained)
    total = s.num_samples if pairs is None else len(pairs)
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
                if pairs is not None:
                    batch_pairs = pairs[start:start + num]
                    batch = collator([{"condition_input_ids": p.condition_ids, "input_ids": []} for p in batch_pairs])
                    with torch.inference_mode():
                        latents = embed_batch(c.embedder, batch)
                    condition = Condition.from_mask(latents, batch.cond_mask)
                    cond_len = condition.lengths
                    gen_length = max_length - collator.max_input_length
                out = generate(runner, c.target, sampler, grid_time, guidance, num=num, length=max_length,
                               generator=gen, condition=condition, device=device)
                rows = postprocess(out.token_ids, tok.eos_id, tok.pad_id, cond_len=cond_len, gen_length=gen_length)
                for i, ids in enumerate(rows):
                    p = batch_pairs[i] if batch_pairs else None
                    records.append(SampleRecord(text=tok.decode(ids), token_ids=ids, seed=seed, index=start + i,
                                                source=p.source if p else None, reference=p.reference if p else None))
                progress.advance(task, num)
    return records


def write_samples(path: Path, records: Sequence[SampleRecord]) -> None:
    atomic_write_text(path, "".join(json.dumps(r.__dict__, ensure_ascii=False) + "\n" for r in records))


def read_samples(path: Path) -> list[SampleRecord]:
    if not Path(path).is_file():
        raise DataError(f"samples file not found: {path}")
    out = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append(SampleRecord(**json.loads(line)))
        except (json.JSONDecodeError, TypeError) as exc:
            raise DataError(f"{path}:{n}: not a sample record ({exc})") from None
    if not out:
        raise DataError(f"samples file {path} is empty")
    return out


def sample_stage(checkpoint: Path, run_dir: Path, recipe: Recipe, console: Console | None = None,
                 engine: Path | None = None) -> Path:
    """Write ``run_dir/samples.jsonl`` for ``recipe.sample`` (skipped when already done)."""
    console = _console(console)
    run = RunDir(Path(run_dir))
    sample_overrides = _sample_overrides(recipe)
    trained = load_trained(checkpoint, sample_overrides, plugin_files=recipe.plugins)
    fp = _sampling_fingerprint(trained.recipe, checkpoint, trained.step, engine)
    if run.is_done("sample", fp) and run.samples.exists():
        console.print(f"sample: already done ({run.samples})")
        return run.samples
    run.forget("evaluate", "report")
    t0 = time.perf_counter()
    records = generate_records(trained, engine=engine, console=console)
    write_samples(run.samples, records)
    run.mark_done("sample", fp, n=len(records), seconds=round(time.perf_counter() - t0, 2))
    return run.samples


def _sample_overrides(recipe: Recipe) -> list[str]:
    """The recipe's sample section as overrides for the checkpoint's stored recipe."""
    r = resolved_dict(recipe)
    return [f"sample={json.dumps(r['sample'])}", f"eval={json.dumps(r['eval'])}"]


# ----------------------------------------------------------------------------------------
# the whole run
# ----------------------------------------------------------------------------------------
def run_recipe(recipe: Recipe, run_dir: Path, console: Console | None = None) -> Path:
    """prepare → train → sample → evaluate → report; returns report.md."""
    from elfkit.pipeline.evaluate import evaluate_stage
    from elfkit.pipeline.report.document import write_report

    console = _console(console)
    run = RunDir(Path(run_dir))
    console.rule(f"[bold]{recipe.name}[/] → {run.root}")
    ckpt = train_stage(recipe, run.root, console)
    if int(os.environ.get("RANK", "0")) != 0:   # under torchrun: rank 0 samples, evaluates, reports
        return run.report
    sample_stage(ckpt, run.root, recipe, console)
    if recipe.eval.evaluators:
        with console.status("evaluating"):
            evaluate_stage(run.samples, run.root, recipe, _registry(recipe))
    return write_report(run.root)


# ----------------------------------------------------------------------------------------
# CLI entry points that start from files
# ----------------------------------------------------------------------------------------
def sample_from_checkpoint(checkpoint: Path, overrides: Sequence[str], *, out_dir: Path | None = None,
                           engine: Path | None = None, plugin_files: Sequence[str] = (),
                           console: Console | None = None) -> Path:
    console = _console(console)
    trained = load_trained(checkpoint, overrides, plugin_files=plugin_files)
    out = Path(out_dir) if out_dir else Path(checkpoint).resolve().parent.parent / "samples"
    run = RunDir(out)
    write_recipe(run, trained.recipe)
    records = generate_records(trained, engine=engine, console=console)
    write_samples(run.samples, records)
    return run.samples


def evaluate_samples_file(samples: Path, recipe_path: Path | None, overrides: Sequence[str], *,
                          plugin_files: Sequence[str] = (), console: Console | None = None) -> Path:
    from elfkit.pipeline.evaluate import evaluate_stage

    samples = Path(samples)
    recipe_path = recipe_path or samples.parent / "recipe.yaml"
    if not recipe_path.is_file():
        raise RecipeError(f"no recipe for {samples}: pass --recipe FILE (looked for {recipe_path})")
    recipe = load_recipe(recipe_path, overrides, extra_plugins=plugin_files)
    read_samples(samples)  # clear error on a bad file before loading judges
    return evaluate_stage(samples, samples.parent, recipe, _registry(recipe))


def export_checkpoint(checkpoint: Path, fmt: str, *, precision: str, batch: str, seq: str | None,
                      out_dir: Path | None, plugin_files: Sequence[str] = (), console: Console | None = None) -> Path:
    """Export the checkpoint's (EMA) denoiser; returns the manifest after the parity check passed."""
    from elfkit.components.exporters import ExportSpec, export_backbone, parse_range

    trained = load_trained(checkpoint, plugin_files=plugin_files)
    overrides: dict[str, Any] = {"precision": precision, "batch": parse_range(batch, "--batch")}
    if seq:
        overrides["seq"] = parse_range(seq, "--seq")
    spec = ExportSpec(**overrides)
    out = Path(out_dir) if out_dir else Path(checkpoint).resolve().parent.parent / f"export-{fmt}-{precision}"
    with _console(console).status(f"exporting to {fmt} ({precision}) and checking parity"):
        return export_backbone(trained.components.backbone, fmt, out, spec, trained.components.registry,
                               target=trained.components.target,
                               metadata={"checkpoint": str(Path(checkpoint).resolve()),
                                         "step": trained.step, "recipe": resolved_dict(trained.recipe)})
