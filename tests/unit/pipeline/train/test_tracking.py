"""Experiment tracking: step records reach the trackers; a missing package is a clear error."""

from __future__ import annotations

import importlib.util

import pytest

from elfkit.errors import MissingDependencyError
from elfkit.pipeline.rundir import RunDir
from elfkit.pipeline.train.loop import fit
from elfkit.pipeline.train.monitor import Monitor
from elfkit.pipeline.train.tracking import check_trackers
from elfkit.recipe.schema import TrainSection
from tests.fixtures.optional import requires_wheel
from tests.fixtures.train_fixtures import make_components


class _ListTracker:
    def __init__(self) -> None:
        self.logged: list[tuple[int, dict[str, float]]] = []
        self.closed = False

    def log(self, step: int, scalars: dict[str, float]) -> None:
        self.logged.append((step, scalars))

    def close(self) -> None:
        self.closed = True


def test_monitor_sends_numeric_fields_of_step_records_to_trackers(tmp_path) -> None:
    tracker = _ListTracker()
    monitor = Monitor(tmp_path / "train_log.jsonl", 10, 0, enabled=True, trackers=[tracker])
    monitor.log({"step": 3, "loss": 1.5, "lr": 0.01, "note": "text", "flag": True})
    monitor.log({"event": "spike", "step": 4, "loss": 9.0, "median": 2.0})
    monitor.log({"event": "start", "environment": {"torch": "x"}})     # no step: not a scalar point
    monitor.close()
    assert tracker.logged == [(3, {"train/loss": 1.5, "train/lr": 0.01}),
                              (4, {"spike/loss": 9.0, "spike/median": 2.0})]
    assert tracker.closed


def test_a_tracker_that_is_not_installed_names_the_extra(monkeypatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(MissingDependencyError) as e:
        check_trackers(["jsonl", "wandb"])
    assert "train.log_to asks for wandb, which is not installed" in str(e.value)
    assert "pip install 'elfkit[tracking]'" in str(e.value)
    check_trackers(["jsonl"])   # the default needs nothing


def test_log_to_must_keep_jsonl_and_names_known_trackers_only() -> None:
    assert TrainSection().log_to == ["jsonl"]
    with pytest.raises(ValueError, match="must include 'jsonl'"):
        TrainSection(log_to=["tensorboard"])
    with pytest.raises(ValueError, match="mlflow"):
        TrainSection(log_to=["jsonl", "mlflow"])   # type: ignore[list-item]


@requires_wheel("tensorboard")
@pytest.mark.slow   # importing tensorboard takes seconds
def test_tensorboard_event_files_hold_the_training_scalars(tmp_path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    comps, data = make_components(steps=4, log_every=2, log_to=["jsonl", "tensorboard"])
    fit(comps, data, RunDir(tmp_path))
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert "train/loss" in events.Tags()["scalars"]
    assert [e.step for e in events.Scalars("train/loss")] == [2, 4]
    assert [e.step for e in events.Scalars("completed/steps_done")] == [4]


@requires_wheel("wandb")
@pytest.mark.slow
def test_wandb_runs_offline_inside_the_run_directory(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("WANDB_MODE", raising=False)
    comps, data = make_components(steps=2, log_every=1, log_to=["jsonl", "wandb"])
    fit(comps, data, RunDir(tmp_path))
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, list((tmp_path / "wandb").iterdir())


def test_wandb_tracker_is_offline_in_the_run_directory_with_the_recipe_as_config(tmp_path, monkeypatch) -> None:
    """The wiring, against a stand-in ``wandb`` module (the real one is tested where installed)."""
    import importlib.machinery
    import os
    import sys
    import types

    calls: list[tuple] = []

    class _Run:
        def log(self, scalars, step):
            calls.append(("log", step, scalars))

        def finish(self):
            calls.append(("finish",))

    fake = types.ModuleType("wandb")
    fake.__spec__ = importlib.machinery.ModuleSpec("wandb", None)
    fake.init = lambda **kw: calls.append(("init", kw)) or _Run()   # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "wandb", fake)
    monkeypatch.setenv("WANDB_MODE", "online")
    comps, data = make_components(steps=2, log_every=1, log_to=["jsonl", "wandb"])
    fit(comps, data, RunDir(tmp_path))
    assert os.environ["WANDB_MODE"] == "offline"
    init = calls[0]
    assert init[0] == "init" and init[1]["mode"] == "offline" and init[1]["dir"] == str(tmp_path)
    assert init[1]["config"]["train"]["log_to"] == ["jsonl", "wandb"] and init[1]["name"] == "tiny"
    assert [c[1] for c in calls if c[0] == "log" and "train/loss" in c[2]] == [1, 2]
    assert calls[-1] == ("finish",)
