"""torchrun on CPU (gloo): 2 ranks × 1 micro-batch must match 1 process × 2 accumulated
micro-batches (same rows, same per-micro-batch noise), for DDP, DDP with a resume, and FSDP2.

The file is also the worker script: ``torchrun ... test_distributed.py RUN_DIR STEPS PARALLEL [TABLE]``.
"""

from __future__ import annotations

import faulthandler
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import torch

if TYPE_CHECKING:
    from elfkit.pipeline.checkpoint import Checkpoint

REPO = Path(__file__).resolve().parents[2]
COMMON = dict(lr=2e-3, warmup_steps=2, checkpoint_every=100, n=64, cond_len=2, label_drop_every=3)


def _worker(run_dir: str, steps: int, parallel: str, table: str = "frozen") -> None:
    from elfkit.pipeline.rundir import RunDir
    from elfkit.pipeline.train.loop import fit
    from tests.fixtures.train_fixtures import make_components
    comps, data = make_components(steps=steps, batch_size=8, grad_accum=1, parallel=parallel, table=table, **COMMON)
    fit(comps, data, RunDir(Path(run_dir)))


WORKER_TIMEOUT_S = 180   # a worker prints its stacks and ends itself after this, whatever it is blocked in
LAUNCH_TIMEOUT_S = 240   # then torchrun, which should have seen its workers fail by now


def _torchrun(run_dir: Path, steps: int, parallel: str, table: str = "frozen") -> None:
    """Run the worker script under ``torchrun --standalone`` on 2 CPU ranks; fail with its output.

    ``--local-addr 127.0.0.1``: otherwise torchrun's agent binds the machine's FQDN, which a CI
    host may not resolve (it then retries for many minutes before starting a worker). torchrun
    starts each worker in its own session, so killing torchrun's process group would leave a hung
    worker behind: workers time themselves out instead, and output goes to a file, not a pipe a
    leftover worker could hold open.
    """
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1",
           "ELFKIT_TEST_WORKER_TIMEOUT": str(WORKER_TIMEOUT_S)}
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--local-addr", "127.0.0.1",
           "--nproc_per_node=2",
           str(Path(__file__).resolve()), str(run_dir), str(steps), parallel, table]
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
        try:
            proc.wait(timeout=LAUNCH_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGTERM)   # torchrun forwards it to the workers' sessions
            try:
                proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            log.seek(0)
            pytest.fail(f"torchrun ran past {LAUNCH_TIMEOUT_S} s (a collective mismatch between ranks, or a host "
                        f"name that does not resolve?)\n{log.read()[-6000:]}")
        log.seek(0)
        assert proc.returncode == 0, log.read()[-8000:]


@pytest.fixture(scope="module")
def single_process(tmp_path_factory) -> Checkpoint:
    """The reference: one process, micro-batch 4, 2 accumulation steps (global batch 8)."""
    from elfkit.pipeline.checkpoint import load_checkpoint
    from elfkit.pipeline.rundir import RunDir
    from elfkit.pipeline.train.loop import fit
    from tests.fixtures.train_fixtures import make_components
    run = RunDir(tmp_path_factory.mktemp("single"))
    comps, data = make_components(steps=6, batch_size=4, grad_accum=2, **COMMON)
    fit(comps, data, run)
    return load_checkpoint(run.checkpoints.last)


def _assert_same_weights(got: Checkpoint, want: Checkpoint) -> None:
    assert got.step == want.step
    for key in ("model", "ema"):
        assert set(getattr(got, key)) == set(getattr(want, key))
        for name, t in getattr(want, key).items():
            torch.testing.assert_close(getattr(got, key)[name], t, rtol=1e-4, atol=1e-5, msg=f"{key}.{name}")


@pytest.mark.slow
def test_ddp_two_ranks_match_accumulated_single_process(tmp_path, single_process) -> None:
    from elfkit.pipeline.checkpoint import load_checkpoint
    _torchrun(tmp_path, 6, "ddp")
    got = load_checkpoint(tmp_path / "checkpoints" / "last")
    assert got.world_size == 2 and got.micro_batch == 4
    _assert_same_weights(got, single_process)


@pytest.mark.slow
def test_ddp_resume_continues_from_checkpoint(tmp_path, single_process) -> None:
    from elfkit.pipeline.checkpoint import load_checkpoint
    from elfkit.pipeline.train.monitor import read_log
    _torchrun(tmp_path, 3, "ddp")
    _torchrun(tmp_path, 6, "ddp")     # same run dir, longer schedule: resumes at step 3
    events = [(r["event"], r["step"]) for r in read_log(tmp_path) if "event" in r]
    assert events == [("start", 0), ("completed", 3), ("resume", 3), ("completed", 6)]
    _assert_same_weights(load_checkpoint(tmp_path / "checkpoints" / "last"), single_process)


@pytest.mark.slow
def test_ddp_syncs_a_learned_table_tied_to_the_unembedding(tmp_path) -> None:
    """The tied table gets gradient from the latents (outside DDP's forward) and the logits; DDP
    must all-reduce the sum once, exactly as one process accumulating both micro-batches."""
    from elfkit.pipeline.checkpoint import load_checkpoint
    from elfkit.pipeline.rundir import RunDir
    from elfkit.pipeline.train.loop import fit
    from tests.fixtures.train_fixtures import make_components
    comps, data = make_components(steps=3, batch_size=4, grad_accum=2, table="tied", **COMMON)
    fit(comps, data, RunDir(tmp_path / "single"))
    _torchrun(tmp_path / "ddp", 3, "ddp", "tied")
    want = load_checkpoint(tmp_path / "single" / "checkpoints" / "last")
    got = load_checkpoint(tmp_path / "ddp" / "checkpoints" / "last")
    assert "unembed_table" in got.model and got.embedder is None
    _assert_same_weights(got, want)


@pytest.mark.slow
def test_fsdp2_two_ranks_match_accumulated_single_process(tmp_path, single_process) -> None:
    from elfkit.pipeline.checkpoint import load_checkpoint
    _torchrun(tmp_path, 6, "fsdp")
    _assert_same_weights(load_checkpoint(tmp_path / "checkpoints" / "last"), single_process)


@pytest.mark.slow
def test_torchrun_runs_on_a_host_whose_name_does_not_resolve(tmp_path) -> None:
    """The CI host whose suite hung for 90 minutes: its name resolved nowhere, and ``torchrun
    --standalone`` (its agent, before any worker starts) retries binding that name. Replayed in a
    private UTS namespace; ``_torchrun``'s ``--local-addr 127.0.0.1`` must make it run."""
    if shutil.which("unshare") is None or subprocess.run(
            ["unshare", "--uts", "hostname", "elfkit-unresolvable-host"], capture_output=True).returncode != 0:
        pytest.skip("needs `unshare --uts` (util-linux, and the right to make a UTS namespace) to rename the host")
    script = ("import socket; from pathlib import Path; "
              "from tests.integration.test_distributed import _torchrun; "
              "print('HOST', socket.gethostname()); "
              f"_torchrun(Path({str(tmp_path)!r}), 2, 'ddp')")
    proc = subprocess.run(["unshare", "--uts", "sh", "-c", 'hostname elfkit-unresolvable-host && exec "$0" -c "$1"',
                           sys.executable, script], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                          capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S + 60)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    assert "HOST elfkit-unresolvable-host" in proc.stdout
    assert (tmp_path / "checkpoints" / "last").exists()


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    if os.environ.get("ELFKIT_TEST_WORKER_TIMEOUT"):   # print every thread's stack, then end the worker
        faulthandler.dump_traceback_later(int(os.environ["ELFKIT_TEST_WORKER_TIMEOUT"]), exit=True)
    _worker(sys.argv[1], int(sys.argv[2]), sys.argv[3], *sys.argv[4:5])
    # Skip interpreter shutdown: about 1 worker in 30 hung there after a completed run (its main thread
    # in torch._dynamo's atexit hook, starved of the GIL by a native thread; not root-caused). All the
    # test reads (checkpoint, train_log.jsonl) is written and closed by now.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
