"""Deterministic-kernel mode and the environment record a bit-for-bit comparison needs."""

from __future__ import annotations

import torch

from elfkit.pipeline.checkpoint import load_checkpoint
from elfkit.pipeline.rundir import RunDir
from elfkit.pipeline.train.determinism import cpu_model, deterministic_kernels, environment_facts
from elfkit.pipeline.train.loop import fit
from elfkit.pipeline.train.monitor import read_log
from tests.fixtures.train_fixtures import make_components


def test_environment_names_software_hardware_and_flags() -> None:
    facts = environment_facts(torch.device("cpu"), world_size=1)
    assert facts["torch"] == torch.__version__ and facts["device"] == "cpu" and facts["world_size"] == 1
    assert facts["cpu"] == cpu_model() and facts["cpu"]
    assert facts["threads"] == torch.get_num_threads()
    assert facts["deterministic_algorithms"] is torch.are_deterministic_algorithms_enabled()
    assert "gpu" not in facts


def test_deterministic_mode_is_scoped() -> None:
    assert not torch.are_deterministic_algorithms_enabled()
    with deterministic_kernels(True):
        assert torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.deterministic
        assert not torch.backends.cudnn.benchmark
    assert not torch.are_deterministic_algorithms_enabled() and not torch.backends.cudnn.deterministic
    with deterministic_kernels(False):
        assert not torch.are_deterministic_algorithms_enabled()


def test_deterministic_training_on_cpu_runs_and_matches_the_default(tmp_path) -> None:
    plain = fit(*make_components(steps=3, checkpoint_every=3), RunDir(tmp_path / "plain"))
    strict = fit(*make_components(steps=3, checkpoint_every=3, deterministic=True), RunDir(tmp_path / "strict"))
    assert not torch.are_deterministic_algorithms_enabled()      # restored after fit
    a, b = load_checkpoint(plain.checkpoint), load_checkpoint(strict.checkpoint)
    assert all(torch.equal(a.model[k], b.model[k]) for k in a.model)
    assert read_log(tmp_path / "strict")[0]["environment"]["deterministic_algorithms"] is True
    assert read_log(tmp_path / "plain")[0]["environment"]["deterministic_algorithms"] is False
