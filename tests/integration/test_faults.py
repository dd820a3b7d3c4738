"""Fault injection: kills, damaged files, a second writer, a full or read-only disk, hostile files.

Every training trial runs :mod:`tests.fixtures.fault_driver` (the tiny in-memory ELF run,
12 steps, a checkpoint every 3; killed runs in a subprocess, the others in this process on
one thread, as the driver does) and checks one of two outcomes: a clear error that names the
file and what to do, or an exact resume (every checkpoint equal to an uninterrupted run's:
weights, EMA, optimiser, scheduler, RNG, data position, and the same logged losses). In every
trial no intact checkpoint is overwritten with other content, no temp file or lock is left
behind, and no code from a file is executed.

The kill points are drawn from a seeded generator, so every run tries the same ones.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import pickle
import random
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from rich.console import Console
from safetensors.torch import save as safetensors_save

from elfkit.errors import CheckpointError, ElfkitError, StorageError
from elfkit.pipeline.checkpoint import Checkpoint, CheckpointDir, codec, load_checkpoint
from elfkit.pipeline.checkpoint.legacy import convert
from elfkit.pipeline.rundir import RunDir
from elfkit.pipeline.trained import load_trained
from tests.fixtures import fault_driver

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
DRIVER = [sys.executable, "-m", "tests.fixtures.fault_driver"]
STEPS, EVERY = 12, 3


def _kill_points(seed: int = 20261202) -> list[str]:
    """Seven seeded points: between checkpoints, torn step files, torn pointers, step file done but
    not yet pointed at."""
    rng = random.Random(seed)
    return sorted({f"batch:{rng.randint(2, STEPS)}", f"batch:{rng.randint(2, STEPS)}",
                   f"write:{rng.randrange(1, 8, 2)}", f"write:{rng.randrange(1, 8, 2)}",
                   f"write:{rng.randrange(2, 9, 2)}", f"pointer:{rng.randint(1, 4)}",
                   f"pointer:{rng.randint(1, 4)}"})


KILL_POINTS = _kill_points()


def _drive(run_dir: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        [str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([*DRIVER, str(run_dir), *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def _train(run_dir: Path, resume_from: Path | None = None) -> tuple[int, str]:
    """The driver in this process: (0, console output) or (2, the error message)."""
    threads = torch.get_num_threads()
    console = Console(file=io.StringIO(), width=400)
    try:
        fault_driver.train(run_dir, resume_from=resume_from, console=console)
    except ElfkitError as exc:
        return 2, f"{type(exc).__name__}: {exc}"
    finally:
        torch.set_num_threads(threads)
    return 0, console.file.getvalue()  # type: ignore[attr-defined]


def _state(path: Path) -> tuple[dict[str, torch.Tensor], str]:
    """A checkpoint's tensors and its other values as canonical JSON (tuples read as lists)."""
    ck = Checkpoint.load(path)
    tensors: dict[str, torch.Tensor] = {}
    tree = codec.split({k: getattr(ck, k) for k in ck.__dataclass_fields__}, tensors, "ck")
    return tensors, json.dumps(_untuple(tree), sort_keys=True)


def _untuple(tree):
    if isinstance(tree, dict):
        if set(tree) == {codec.TUPLE}:
            return [_untuple(v) for v in tree[codec.TUPLE]]
        return {k: _untuple(v) for k, v in tree.items()}
    return [_untuple(v) for v in tree] if isinstance(tree, list) else tree


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _intact(run_dir: Path) -> dict[str, str]:
    """Step files that verify → their sha256."""
    out = {}
    for _, p in CheckpointDir(run_dir / "checkpoints").steps():
        try:
            Checkpoint.load(p)
        except CheckpointError:
            continue
        out[p.name] = _digest(p)
    return out


def _logged_steps(run_dir: Path) -> list[tuple[int, float]]:
    rows = [json.loads(x) for x in (run_dir / "train_log.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in rows if "loss" in r]


def _assert_clean(run_dir: Path) -> None:
    leftovers = [p.name for d in (run_dir, run_dir / "checkpoints") for p in d.iterdir() if p.name.endswith(".tmp")]
    assert not leftovers and not (run_dir / ".lock").exists(), leftovers


def _assert_same_as(reference: Path, run_dir: Path) -> None:
    """Exact resume: every checkpoint and every logged loss equal the uninterrupted run's."""
    want = CheckpointDir(reference / "checkpoints").steps()
    got = CheckpointDir(run_dir / "checkpoints").steps()
    assert [s for s, _ in got] == [s for s, _ in want]
    for (_, a), (_, b) in zip(want, got, strict=True):
        (ta, ma), (tb, mb) = _state(a), _state(b)
        assert ma == mb and ta.keys() == tb.keys(), b
        assert all(torch.equal(ta[k], tb[k]) for k in ta), b   # max abs diff 0.0
    assert _logged_steps(run_dir) == _logged_steps(reference)   # every step once, same losses
    final = load_checkpoint(run_dir)
    assert final.step == STEPS and final.ema is not None and final.optimizer is not None


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    code, out = _train(run_dir)
    assert code == 0, out
    assert [s for s, _ in CheckpointDir(run_dir / "checkpoints").steps()] == [3, 6, 9, 12]
    return run_dir


def _copy(reference: Path, tmp_path: Path) -> Path:
    run_dir = tmp_path / "run"
    shutil.copytree(reference, run_dir)
    return run_dir


# ------------------------------------------------------------------------------ kill -9
@pytest.mark.parametrize("point", KILL_POINTS)
def test_kill_at_a_seeded_point_resumes_exactly(point: str, reference: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    killed = _drive(run_dir, "--fault", point)
    assert killed.returncode == -9, (point, killed.stderr[-2000:])
    before = {name: _state(run_dir / "checkpoints" / name) for name in _intact(run_dir)}
    code, out = _train(run_dir)
    assert code == 0, out
    for name, (tensors, meta) in before.items():   # nothing good overwritten (rewritten equal at most)
        t, m = _state(run_dir / "checkpoints" / name)
        assert m == meta and all(torch.equal(t[k], tensors[k]) for k in t)
    _assert_clean(run_dir)
    _assert_same_as(reference, run_dir)


# ------------------------------------------------------------------------------ damaged files
def _truncate(p: Path) -> None:
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def _flip(p: Path) -> None:
    data = bytearray(p.read_bytes())
    for i in range(len(data) // 2, len(data) // 2 + 64):   # 64 bytes in the middle of the weights
        data[i] ^= 0xA5
    p.write_bytes(bytes(data))


def _empty(p: Path) -> None:
    p.write_bytes(b"")


class _Payload:
    """Unpickling this creates ``marker``: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("damage", [_truncate, _flip, _empty, "pickle"], ids=["truncated", "flipped", "empty",
                                                                             "malicious-pickle"])
def test_damaged_newest_checkpoint_is_named_then_resumed_from_the_intact_one(damage, reference: Path,
                                                                              tmp_path: Path) -> None:
    run_dir = _copy(reference, tmp_path)
    newest, older = run_dir / "checkpoints" / "step_12.safetensors", run_dir / "checkpoints" / "step_9.safetensors"
    marker = tmp_path / "pwned"
    if damage == "pickle":
        newest.write_bytes(pickle.dumps({"model": _Payload(marker)}))
    else:
        damage(newest)
    kept = _intact(run_dir)
    code, message = _train(run_dir)
    assert code == 2 and message.startswith("CheckpointError"), message
    assert str(newest) in message and f"{older} (step 9)" in message and "--resume-from" in message
    assert _intact(run_dir) == kept and not marker.exists()
    code, out = _train(run_dir, resume_from=older)
    assert code == 0 and "--resume-from" in out, out
    _assert_clean(run_dir)
    _assert_same_as(reference, run_dir)
    assert not marker.exists()


def test_missing_last_pointer_resumes_from_the_newest_intact_step(reference: Path, tmp_path: Path) -> None:
    run_dir = _copy(reference, tmp_path)
    ckpts = run_dir / "checkpoints"
    (ckpts / "last").unlink()
    (ckpts / "step_12.safetensors").unlink()
    _flip(ckpts / "step_9.safetensors")
    code, out = _train(run_dir)
    assert code == 0, out
    assert "is missing; resuming from the newest intact checkpoint step_6.safetensors (step 6)" in out
    _assert_same_as(reference, run_dir)   # step_9 rewritten from the same state: the damage is repaired


# ------------------------------------------------------------------------------ hostile files
def test_old_and_malicious_pickles_never_run(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    ckpts = tmp_path / "run" / "checkpoints"
    ckpts.mkdir(parents=True)
    torch.save({"format": 1, "recipe": {}, "model": {}, "step": 4, "evil": _Payload(marker)}, ckpts / "last.pt")
    code, message = _train(tmp_path / "run")
    assert code == 2 and "elfkit checkpoint convert" in message, message
    for attempt in (lambda: load_checkpoint(ckpts / "last.pt"), lambda: load_trained(tmp_path / "run"),
                    lambda: convert(ckpts / "last.pt")):
        with pytest.raises(CheckpointError):
            attempt()
    raw = tmp_path / "raw.safetensors"
    raw.write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(CheckpointError):
        load_checkpoint(raw)
    assert not marker.exists()


def test_crafted_safetensors_with_a_valid_checksum_are_data_only(tmp_path: Path) -> None:
    """A hand-made file can carry any JSON and a matching checksum: it is still only data."""
    marker = tmp_path / "pwned"
    tensors = {"model.w": torch.zeros(1)}
    fields = {"recipe": {"py/object": "os.system", "__reduce__": ["touch", str(marker)]},
              "model": {"w": {codec.TENSOR: "model.w"}}, "step": 1}
    path = tmp_path / "step_1.safetensors"

    def craft(fields: dict) -> None:
        meta = {"format": 2, "fields": fields}
        meta["sha256"] = codec.checksum(codec.canonical_json(meta), tensors)
        path.write_bytes(safetensors_save(tensors, metadata={"elfkit": codec.canonical_json(meta)}))

    craft(fields)
    loaded = load_checkpoint(path)               # plain dicts and strings: nothing is resolved or called
    assert loaded.recipe["py/object"] == "os.system" and not marker.exists()
    for bad in ({**fields, "optimizer": {codec.TENSOR: "not-in-the-file"}}, {**fields, "model": "os.system"},
                {**fields, "step": {codec.DICT: "x"}}):
        craft(bad)
        with pytest.raises(CheckpointError, match="not a valid elfkit checkpoint"):
            load_checkpoint(path)
    assert not marker.exists()


def test_a_plugin_named_in_a_stored_recipe_is_not_run(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    plugin = tmp_path / "evil_plugin.py"
    plugin.write_text(f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n")
    (tmp_path / "data.txt").write_text("a b c\n" * 4)
    recipe = {"name": "evil", "seed": 0, "plugins": [str(plugin)],
              "data": {"name": "local", "data_files": str(tmp_path / "data.txt"), "max_length": 8},
              "embedder": {"name": "learned-table", "dim": 8},
              "backbone": {"name": "elf", "preset": None, "depth": 1, "width": 16, "heads": 2,
                           "bottleneck_dim": 4, "decoder_hidden": 8},
              "sample": {"sampler": {"name": "evil-sampler"}}}
    path = tmp_path / "step_1.safetensors"
    Checkpoint(recipe=recipe, model={"w": torch.zeros(1)}, step=1).save(path)
    with pytest.raises(CheckpointError, match=f"trained with the plugin\\(s\\) {plugin}.*--plugin PATH"):
        load_trained(path)
    assert not marker.exists()


# ------------------------------------------------------------------------------ two writers
def test_a_second_writer_is_refused_and_a_dead_ones_lock_is_taken_over(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    holder = subprocess.Popen([*DRIVER, str(run_dir), "--hold"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        second = _drive(run_dir)
        assert second.returncode == 2 and f"in use by another elfkit process (pid {holder.pid}" in second.stderr
        cli = subprocess.run([sys.executable, "-m", "elfkit.cli.app", "train", str(ROOT / "recipes" / "tiny.yaml"),
                              "--out", str(run_dir)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert cli.returncode == 2 and "RunDirBusyError" in cli.stderr and "Traceback" not in cli.stderr
        assert not (run_dir / "checkpoints").exists()   # neither second writer touched anything
    finally:
        holder.kill()
        holder.wait()
    code, out = _train(run_dir)   # the holder died without releasing: its stale lock is taken over
    assert code == 0, out
    _assert_clean(run_dir)


# ------------------------------------------------------------------------------ disk full, read-only
@contextlib.contextmanager
def _tmpfs(where: Path, size: str) -> Iterator[bool]:
    """A small tmpfs at ``where`` (True), or False where mounting is not allowed (CI containers)."""
    where.mkdir(parents=True)
    if not sys.platform.startswith("linux") or os.geteuid() != 0:
        yield False
        return
    ok = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                        capture_output=True).returncode == 0
    try:
        yield ok
    finally:
        if ok:
            subprocess.run(["umount", "-l", str(where)], capture_output=True)


def _remount(where: Path, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(where)], check=True, capture_output=True)


def test_disk_full_is_a_clear_error_and_keeps_every_intact_checkpoint(reference: Path, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    one = (reference / "checkpoints" / "step_3.safetensors").stat().st_size
    with _tmpfs(tmp_path / "disk", f"{int(one * 2.5) // 1024}k") as mounted:
        run_dir = tmp_path / "disk" / "run"
        if mounted:   # a real full disk: two checkpoints fit, the third does not
            code, message = _train(run_dir)
            assert code == 2 and message.startswith("StorageError"), message
            assert f"disk full while writing {run_dir / 'checkpoints' / 'step_9.safetensors'}" in message
            assert "free" in message
            assert set(_intact(run_dir)) == {"step_3.safetensors", "step_6.safetensors"}
            assert load_checkpoint(run_dir).step == 6
            _assert_clean(run_dir)
            _remount(tmp_path / "disk", "size=64m")
            code, out = _train(run_dir)
            assert code == 0, out
            _assert_same_as(reference, run_dir)
        else:         # no mount allowed: the writer reports ENOSPC instead
            run_dir = _copy(reference, tmp_path)
            newest = run_dir / "checkpoints" / "step_12.safetensors"
            before = _digest(newest)

            def enospc(fd: int) -> None:
                raise OSError(errno.ENOSPC, "No space left on device")
            monkeypatch.setattr(os, "fsync", enospc)
            with pytest.raises(StorageError, match=f"disk full while writing {newest}: .* free"):
                load_checkpoint(newest).save(newest)
            monkeypatch.undo()
            assert _digest(newest) == before
            _assert_clean(run_dir)


def test_read_only_or_unwritable_run_directory_fails_before_work(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    with _tmpfs(tmp_path / "disk", "4m") as mounted:
        run_dir = tmp_path / "disk" / "run"
        if mounted:
            _remount(tmp_path / "disk", "ro")
            code, message = _train(run_dir)
            assert code == 2 and "read-only filesystem" in message, message
    run_dir = tmp_path / "unwritable"

    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")
    monkeypatch.setattr(tempfile, "mkstemp", denied)   # root ignores chmod: simulate the refusal
    with pytest.raises(StorageError, match=f"cannot write .*{run_dir} is not writable by this user"):
        with RunDir(run_dir).lock("train"):
            pytest.fail("the lock must not be granted")
