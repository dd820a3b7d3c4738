"""Loading raw data: Hugging Face hub datasets (with a clear error when unreachable) and local
files (txt, jsonl/json, parquet, arrow, ``save_to_disk`` folders)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from elfkit.errors import DataError, HubUnreachableError

OFFLINE_RECIPES = "recipes/quickstart.yaml (unconditional) and recipes/bible-translate.yaml (conditional)"

_BUILDERS = {".txt": "text", ".text": "text", ".json": "json", ".jsonl": "json", ".parquet": "parquet",
             ".arrow": "arrow", ".csv": "csv"}


def hub_error(dataset_id: str, exc: BaseException) -> HubUnreachableError:
    return HubUnreachableError(
        f"could not load dataset '{dataset_id}' from the Hugging Face hub ({type(exc).__name__}: "
        f"{str(exc).splitlines()[0][:160] if str(exc) else 'no details'}). "
        "To use a local copy, set `data_files:` (parquet/jsonl/txt files) or `path:` (a folder written by "
        "`datasets.save_to_disk`) in the recipe's data section. Offline recipes that need no download: "
        f"{OFFLINE_RECIPES}.")


def load_hub(dataset_id: str, *, name: str | None = None, split: str = "train", streaming: bool = False,
             cache_dir: str | Path | None = None) -> Any:
    """``datasets.load_dataset(dataset_id)``; network/offline/not-found → HubUnreachableError."""
    import datasets
    from datasets.exceptions import DatasetNotFoundError

    try:
        return datasets.load_dataset(dataset_id, name, split=split, streaming=streaming,
                                     cache_dir=None if cache_dir is None else str(cache_dir))
    except (ConnectionError, OSError, DatasetNotFoundError) as exc:
        raise hub_error(dataset_id, exc) from exc


def _files(data_files: str | Sequence[str]) -> list[Path]:
    files = [Path(data_files)] if isinstance(data_files, (str, Path)) else [Path(f) for f in data_files]
    if not files:
        raise DataError("data_files is empty: name at least one file")
    for f in files:
        if not f.exists():
            raise DataError(f"data file not found: {f}")
        if f.is_file() and f.stat().st_size == 0:
            raise DataError(f"data file is empty: {f}")
    return files


def files_fingerprint(paths: Sequence[Path]) -> str:
    """Identity of local files (path, size, mtime): changes when any file changes."""
    h = hashlib.sha256()
    for p in paths:
        st = p.stat()
        h.update(f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def load_local(*, data_files: str | Sequence[str] | None = None, path: str | None = None, split: str = "train",
               streaming: bool = False, cache_dir: str | Path | None = None,
               sample_by: str = "paragraph") -> tuple[Any, str]:
    """Local data → (dataset, fingerprint). ``path``: a ``save_to_disk`` folder (its ``split``
    sub-folder if it is a DatasetDict); ``data_files``: files of one format (by extension)."""
    import datasets
    from datasets.exceptions import DatasetGenerationError

    if path is not None:
        p = Path(path)
        if not p.exists():
            raise DataError(f"dataset folder not found: {p}")
        try:
            ds = datasets.load_from_disk(str(p))
        except FileNotFoundError as exc:
            raise DataError(f"{p} is not a folder written by datasets.save_to_disk ({exc})") from exc
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise DataError(f"{p} has splits {list(ds)}; no '{split}'")
            ds = ds[split]
        if len(ds) == 0:
            raise DataError(f"dataset folder {p} has no rows")
        fp = files_fingerprint(sorted(q for q in p.rglob("*") if q.is_file()))
        return (ds.to_iterable_dataset() if streaming else ds), fp
    if data_files is None:
        raise DataError("give `data_files:` or `path:` for local data")
    files = _files(data_files)
    suffixes = {f.suffix.lower() for f in files}
    builders = {_BUILDERS.get(s) for s in suffixes}
    builder = builders.pop() if len(builders) == 1 else None
    if builder is None:   # an unknown suffix, or several formats
        raise DataError(f"data_files must share one format ({', '.join(sorted(_BUILDERS))}); got {sorted(suffixes)}")
    kwargs: dict[str, Any] = {"sample_by": sample_by} if builder == "text" else {}
    try:
        ds = datasets.load_dataset(builder, data_files=[str(f) for f in files], split="train", streaming=streaming,
                                   cache_dir=None if cache_dir is None else str(cache_dir), **kwargs)
    except (ValueError, DatasetGenerationError) as exc:
        raise DataError(f"cannot read {', '.join(map(str, files))} as {builder}: {exc}") from exc
    if isinstance(ds, datasets.Dataset) and len(ds) == 0:   # streaming gives an IterableDataset: no length
        raise DataError(f"no rows in {', '.join(map(str, files))}")
    return ds, files_fingerprint(files)
