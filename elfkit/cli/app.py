"""``elfkit``: run, train, sample, eval, report, sweep, export, recipe, plugins, checkpoint.

Every command turns :class:`ElfkitError` into a short red message and exit code 2;
SIGINT/SIGTERM say what was kept and how to resume (exit 130/143). Tracebacks are reserved
for bugs. User text in messages is printed literally: no rich markup or emoji codes in it.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from elfkit.errors import ElfkitError
from elfkit.pipeline.interrupts import Interrupted, install_handlers

app = typer.Typer(no_args_is_help=True, rich_markup_mode="rich", add_completion=False,
                  help="elfkit: train, sample, evaluate and deploy continuous text generators (ELF by default).")
recipe_app = typer.Typer(no_args_is_help=True, help="Validate and inspect recipes.")
plugins_app = typer.Typer(no_args_is_help=True, help="List and create plugins.")
checkpoint_app = typer.Typer(no_args_is_help=True, help="Verify checkpoints; convert old (pickle) ones.")
app.add_typer(recipe_app, name="recipe")
app.add_typer(plugins_app, name="plugins")
app.add_typer(checkpoint_app, name="checkpoint")

# emoji=False: user text such as `--batch a:b:c` must not turn into emoji (":b:")
console = Console(stderr=True, emoji=False)
out = Console(emoji=False)
_GLOBAL_PLUGINS: list[str] = []

F = TypeVar("F", bound=Callable[..., Any])

SetOpt = Annotated[list[str] | None,
                   typer.Option("--set", "-s", help="Override a recipe key: a.b=value (repeatable).")]
PluginOpt = Annotated[list[str] | None, typer.Option("--plugin", "-p", help="Load a one-file plugin (repeatable).")]
ResumeOpt = Annotated[Path | None, typer.Option(
    "--resume-from", help="Resume training from this checkpoint file (default: the run directory's newest).")]
SeedsOpt = Annotated[str | None,
                     typer.Option("--seeds", help="Comma-separated sampling seeds, e.g. 0,1,2 (mean ± s.e.).")]


def friendly(fn: F) -> F:
    """Print user errors without a traceback; on SIGINT/SIGTERM say what was kept and how to resume."""
    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
        install_handlers()
        try:
            return fn(*args, **kwargs)
        except ElfkitError as exc:
            _error_panel(type(exc).__name__, str(exc))
            raise typer.Exit(2) from None
        except KeyboardInterrupt as exc:
            for sig in saved:   # a second Ctrl-C while we report must not end in a traceback
                signal.signal(sig, signal.SIG_IGN)
            interrupted = exc if isinstance(exc, Interrupted) else Interrupted(signal.SIGINT)
            console.print(Text(interrupted.message(), style="yellow"))
            raise typer.Exit(interrupted.exit_code) from None
        except OSError as exc:
            if exc.errno not in _USER_PATH_ERRORS or exc.filename is None:
                raise
            _error_panel("FileError", f"{exc.filename}: {exc.strerror}. Check the path you gave "
                         "(and that you may write there).")
            raise typer.Exit(2) from None
        finally:
            for sig, handler in saved.items():
                if handler is not None:
                    signal.signal(sig, handler)
    return wrapper  # type: ignore[return-value]


# OSErrors that mean a path a person gave is wrong, not a bug (e.g. --out naming a file)
_USER_PATH_ERRORS = {errno.EEXIST, errno.ENOTDIR, errno.EISDIR, errno.EACCES, errno.EPERM, errno.EROFS,
                     errno.ENAMETOOLONG}


def _error_panel(title: str, message: str) -> None:
    console.print(Panel(Text(message), title=f"[bold red]{escape(title)}", border_style="red", expand=False))


def _out_dir(path: Path | None) -> None:
    """A run or artifact directory a person named: refuse an existing file before any work starts."""
    if path is not None and path.exists() and not path.is_dir():
        raise ElfkitError(f"--out {path} is an existing file, not a directory; choose a directory "
                          "(it is created if missing)")


def _plugins(extra: list[str] | None) -> list[str]:
    return [*_GLOBAL_PLUGINS, *(extra or [])]


def _seeds(seeds: str | None) -> list[str]:
    if not seeds:
        return []
    try:
        values = [int(s) for s in seeds.split(",") if s.strip()]
    except ValueError:
        raise ElfkitError(f"--seeds expects comma-separated integers, got '{seeds}'") from None
    return [f"sample.seeds=[{','.join(map(str, values))}]"]


def _load(recipe: Path, sets: list[str] | None, plugins: list[str] | None, seeds: str | None = None):
    from elfkit.recipe.load import load_recipe
    return load_recipe(recipe, [*(sets or []), *_seeds(seeds)], extra_plugins=_plugins(plugins))


def _run_dir(recipe_name: str, out_dir: Path | None) -> Path:
    return out_dir if out_dir is not None else Path("runs") / recipe_name


@app.callback()
def _main(plugin: PluginOpt = None) -> None:
    """Global options. ``--plugin`` files are also exported in ELFKIT_PLUGINS for sub-processes."""
    _GLOBAL_PLUGINS[:] = [str(Path(p).resolve()) for p in plugin or []]
    if _GLOBAL_PLUGINS:
        os.environ["ELFKIT_PLUGINS"] = os.pathsep.join(_GLOBAL_PLUGINS)


# ----------------------------------------------------------------------------------------
# the run and its stages
# ----------------------------------------------------------------------------------------
@app.command()
@friendly
def run(recipe: Annotated[Path, typer.Argument(help="Recipe YAML.")],
        set_: SetOpt = None, out_dir: Annotated[Path | None, typer.Option("--out", help="Run directory.")] = None,
        seeds: SeedsOpt = None, plugin: PluginOpt = None, resume_from: ResumeOpt = None) -> None:
    """Prepare data → train → sample → evaluate → report. Rerun to resume."""
    _out_dir(out_dir)
    from elfkit.pipeline.run import run_recipe
    r = _load(recipe, set_, plugin, seeds)
    run_dir = _run_dir(r.name, out_dir)
    report = run_recipe(r, run_dir, console=console, resume_from=resume_from)
    out.print(f"[green]done[/]: {escape(str(report))}")


@app.command()
@friendly
def train(recipe: Annotated[Path, typer.Argument(help="Recipe YAML.")], set_: SetOpt = None,
          out_dir: Annotated[Path | None, typer.Option("--out", help="Run directory.")] = None,
          plugin: PluginOpt = None, resume_from: ResumeOpt = None) -> None:
    """Train only (resumes from the run directory's last checkpoint)."""
    _out_dir(out_dir)
    from elfkit.pipeline.train.stage import train_stage
    r = _load(recipe, set_, plugin)
    ckpt = train_stage(r, _run_dir(r.name, out_dir), console=console, resume_from=resume_from)
    out.print(f"[green]checkpoint[/]: {escape(str(ckpt))}")


@app.command()
@friendly
def sample(checkpoint: Annotated[Path, typer.Argument(help="Checkpoint: run directory, run_dir/checkpoints/last "
                                                     "or a step file.")],
           set_: SetOpt = None,
           out_dir: Annotated[Path | None, typer.Option("--out", help="Where to write samples.jsonl.")] = None,
           engine: Annotated[Path | None, typer.Option("--engine", help="Exported artifact dir.")] = None,
           seeds: SeedsOpt = None, plugin: PluginOpt = None) -> None:
    """Sample from a checkpoint (or from an exported engine of it)."""
    _out_dir(out_dir)
    from elfkit.pipeline.sample import sample_from_checkpoint
    path = sample_from_checkpoint(checkpoint, [*(set_ or []), *_seeds(seeds)], out_dir=out_dir, engine=engine,
                                  plugin_files=_plugins(plugin), console=console)
    out.print(f"[green]samples[/]: {escape(str(path))}")


@app.command("eval")
@friendly
def eval_(samples: Annotated[Path, typer.Argument(help="samples.jsonl")],
          recipe: Annotated[Path | None, typer.Option("--recipe", help="Recipe whose eval section to use "
                                                      "(default: the samples' recipe.yaml).")] = None,
          set_: SetOpt = None, plugin: PluginOpt = None) -> None:
    """Evaluate a samples file with the recipe's evaluators; writes metrics.json beside it."""
    from elfkit.pipeline.evaluate import evaluate_samples_file
    path = evaluate_samples_file(samples, recipe, set_ or [], plugin_files=_plugins(plugin))
    out.print(f"[green]metrics[/]: {escape(str(path))}")


@app.command()
@friendly
def report(run_dirs: Annotated[list[Path], typer.Argument(help="One run directory, or several to compare.")],
           out_file: Annotated[Path | None, typer.Option("--out", help="Comparison report path.")] = None) -> None:
    """Write report.md for a run, or compare several runs side by side."""
    from elfkit.pipeline.report.document import compare_runs, write_report
    if out_file is not None and out_file.is_dir():
        raise ElfkitError(f"--out {out_file} is a directory; give the comparison report's file name "
                          "(e.g. --out comparison.md)")
    if len(run_dirs) == 1:
        path = write_report(run_dirs[0])
    else:
        path = compare_runs(run_dirs, out_file or Path("comparison.md"))
    out.print(f"[green]report[/]: {escape(str(path))}")


@app.command()
@friendly
def sweep(recipe: Annotated[Path, typer.Argument(help="Recipe YAML (may carry a sweep: section).")],
          grid: Annotated[list[str] | None, typer.Option("--grid", "-g",
                          help="KEY=v1,v2,... (repeatable), e.g. target=x,eps,v or sampler.steps=8,16")] = None,
          set_: SetOpt = None, out_dir: Annotated[Path | None, typer.Option("--out")] = None,
          seeds: SeedsOpt = None, plugin: PluginOpt = None) -> None:
    """Train once per training setting, sample once per sampling setting; table + frontier plot."""
    _out_dir(out_dir)
    from elfkit.pipeline.sweep import run_sweep
    parsed: dict[str, list[Any]] = {}
    for g in grid or []:
        if "=" not in g or not g.split("=", 1)[0].strip():
            raise ElfkitError(f"--grid expects KEY=v1,v2,..., got '{g}' (e.g. --grid sampler.steps=8,16)")
        k, vs = g.split("=", 1)
        parsed[k.strip()] = [_grid_value(v) for v in vs.split(",")]
    r = _load(recipe, set_, plugin, seeds)
    path = run_sweep(recipe, parsed, out_dir or Path("runs") / f"{r.name}-sweep",
                     overrides=[*(set_ or []), *_seeds(seeds)])
    out.print(f"[green]sweep[/]: {escape(str(path))}")


def _grid_value(text: str) -> Any:
    """One ``--grid`` value, parsed as YAML like a ``--set`` value (unparsable text stays a string)."""
    import yaml
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


@app.command()
@friendly
def export(checkpoint: Annotated[Path, typer.Argument(help="Checkpoint: run directory, checkpoints/last or a "
                                                     "step file.")],
           format_: Annotated[str, typer.Option("--format", "-f",
                                                help="tensorrt | torch-export | onnx")] = "torch-export",
           precision: Annotated[str, typer.Option(help="fp32 | fp16 | bf16")] = "fp32",
           batch: Annotated[str, typer.Option(help="Dynamic batch range MIN:OPT:MAX")] = "1:8:64",
           seq: Annotated[str | None, typer.Option(help="Dynamic sequence range MIN:OPT:MAX "
                                                   "(default: up to the model's max length)")] = None,
           out_dir: Annotated[Path | None, typer.Option("--out", help="Artifact directory.")] = None,
           plugin: PluginOpt = None) -> None:
    """Export the denoiser (denoise + decode modes) and check parity against eager fp32."""
    _out_dir(out_dir)
    from elfkit.pipeline.export import export_checkpoint
    manifest = export_checkpoint(checkpoint, format_, precision=precision, batch=batch, seq=seq, out_dir=out_dir,
                                 plugin_files=_plugins(plugin), console=console)
    out.print(f"[green]exported[/]: {escape(str(manifest))}")


# ----------------------------------------------------------------------------------------
# recipes
# ----------------------------------------------------------------------------------------
@recipe_app.command("validate")
@friendly
def recipe_validate(files: Annotated[list[Path], typer.Argument(help="Recipe YAML files.")],
                    set_: SetOpt = None, plugin: PluginOpt = None) -> None:
    """Check recipes against the schema and the registry (and every value of a ``sweep:`` grid)."""
    for f in files:
        recipe = _load(f, set_, plugin)
        if recipe.sweep is not None and recipe.sweep.grid:
            from elfkit.pipeline.sweep import check_grid
            from elfkit.registry import default_registry
            registry = default_registry([*_plugins(plugin), *recipe.plugins])
            check_grid(f, recipe.sweep.grid, set_ or [], registry=registry)
        out.print(f"[green]ok[/] {escape(str(f))}")


@recipe_app.command("show")
@friendly
def recipe_show(file: Annotated[Path, typer.Argument(help="Recipe YAML.")], set_: SetOpt = None,
                plugin: PluginOpt = None) -> None:
    """Print the fully resolved recipe (every default filled in)."""
    from elfkit.recipe.load import dump_yaml, resolved_dict
    out.print(dump_yaml(resolved_dict(_load(file, set_, plugin))), markup=False, highlight=False)


# ----------------------------------------------------------------------------------------
# checkpoints
# ----------------------------------------------------------------------------------------
@checkpoint_app.command("convert")
@friendly
def checkpoint_convert(old: Annotated[Path, typer.Argument(help="Checkpoint in the old pickle format (.pt).")],
                       new: Annotated[Path | None, typer.Argument(
                           help="Output file (default: step_N.safetensors beside OLD).")] = None) -> None:
    """Convert an old checkpoint without running code (tensors and plain values only, else refused)."""
    from elfkit.pipeline.checkpoint.legacy import convert
    out.print(f"[green]converted[/]: {convert(old, new)}")


@checkpoint_app.command("verify")
@friendly
def checkpoint_verify(paths: Annotated[list[Path], typer.Argument(help="Checkpoint files or run directories.")]
                      ) -> None:
    """Check each checkpoint's sha256; exit code 2 if any is damaged."""
    from elfkit.pipeline.checkpoint import load_checkpoint
    for p in paths:
        out.print(f"[green]ok[/] {p} (step {load_checkpoint(p).step})", markup=True, highlight=False)


# ----------------------------------------------------------------------------------------
# plugins
# ----------------------------------------------------------------------------------------
@plugins_app.command("list")
@friendly
def plugins_list(as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
                 plugin: PluginOpt = None) -> None:
    """Every registered component: kind, name, provider, config fields; and broken plugins."""
    from elfkit.registry import build_registry
    reg = build_registry(_plugins(plugin))
    rows = [{"kind": s.kind, "name": s.name, "provider": s.provider,
             "config": {k: _field_doc(f) for k, f in s.config.model_fields.items()},
             "description": s.description} for s in reg]
    problems = [{"plugin": p.plugin, "error": p.message} for p in reg.problems]
    if as_json:
        out.print_json(json.dumps({"components": rows, "problems": problems}))
        return
    table = Table(title="elfkit components")
    for col in ("kind", "name", "provider", "config fields"):
        table.add_column(col)
    for r in rows:
        table.add_row(*(Text(x) for x in (r["kind"], r["name"], r["provider"], ", ".join(r["config"]))))
    out.print(table)
    for p in problems:
        console.print(f"[red]plugin problem[/] {escape(p['plugin'])}: {escape(p['error'])}")


def _field_doc(f: Any) -> dict[str, Any]:
    default = f.default if f.default is not None else None
    try:
        json.dumps(default)
    except TypeError:
        default = repr(default)
    return {"type": str(f.annotation).replace("typing.", ""), "default": default, "doc": f.description or ""}


@plugins_app.command("new")
@friendly
def plugins_new(kind: Annotated[str, typer.Argument(help="Component kind (sampler).")],
                name: Annotated[str, typer.Argument(help="Component name, e.g. my-heun.")],
                dest: Annotated[Path, typer.Option("--dir", help="Where to write it.")] = Path("."),
                package: Annotated[bool, typer.Option("--package", help="A pip-installable package, "
                                                      "not a single file.")] = False) -> None:
    """Scaffold a plugin with a passing conformance test."""
    if kind != "sampler":
        raise ElfkitError(f"scaffolding is available for: sampler (got '{kind}')")
    from elfkit.cli.scaffold import new_sampler_plugin
    for p in new_sampler_plugin(name, dest, package=package):
        out.print(f"[green]wrote[/] {escape(str(p))}")


def main() -> None:
    app(prog_name="elfkit")


if __name__ == "__main__":
    sys.exit(main())
