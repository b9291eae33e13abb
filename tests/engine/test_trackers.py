"""The metrics stream: metrics.jsonl and the optional TensorBoard / W&B sinks get the same epoch records."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest
from engine_toy import ADAPTATION_PLAN, make_method, toy_config, train_iter_factory, val_iter_factory
from run_helpers import QUICK_RUN

from nnssl.engine import Trainer, logging_sinks
from nnssl.engine.logging_sinks import wandb_run_id


def _fit(folder: Path, *overrides: str) -> list[dict]:
    cfg = toy_config("train.num_epochs=3", *overrides)
    trainer = Trainer(
        make_method(cfg), cfg, train_iter_factory(cfg), val_iter_factory(cfg), folder, ADAPTATION_PLAN, device="cpu"
    )
    assert trainer.fit()
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


class FakeSink:
    instances: list[FakeSink] = []

    def __init__(self, folder: Path, config: dict, fail: bool = False) -> None:
        self.folder, self.config, self.fail = folder, config, fail
        self.records: list[dict] = []
        self.closed = 0
        FakeSink.instances.append(self)

    def write(self, record: dict) -> None:
        if self.fail:
            raise RuntimeError("tracker service unreachable")
        self.records.append(record)

    def close(self) -> None:
        self.closed += 1


@pytest.fixture
def fake_tracker(monkeypatch: pytest.MonkeyPatch):
    FakeSink.instances.clear()
    monkeypatch.setitem(logging_sinks.TRACKERS, "tensorboard", ("json", "nnssl[tensorboard]", FakeSink))
    monkeypatch.setitem(
        logging_sinks.TRACKERS, "wandb", ("json", "nnssl[wandb]", lambda f, c: FakeSink(f, c, fail=True))
    )
    return FakeSink.instances


def test_every_sink_gets_the_metrics_jsonl_records(tmp_path: Path, fake_tracker) -> None:
    lines = _fit(tmp_path, "train.trackers=tensorboard")
    (sink,) = fake_tracker
    assert sink.records == lines and len(lines) == 3
    assert sink.closed == 1 and sink.folder == tmp_path and sink.config["preset"] == "ToyPreset"


def test_a_failing_tracker_is_dropped_and_training_goes_on(tmp_path: Path, fake_tracker, caplog) -> None:
    lines = _fit(tmp_path, "train.trackers=wandb,tensorboard")
    failing, working = fake_tracker
    assert working.records == lines and len(lines) == 3
    assert "Metrics sink FakeSink failed (tracker service unreachable); it is switched off" in caplog.text


def test_tensorboard_event_files_hold_the_same_scalars(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    lines = _fit(tmp_path, "train.trackers=tensorboard")
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    for key in ("train_loss", "val_loss", "lr", "train/masked_fraction"):
        scalars = events.Scalars(key)
        assert [s.step for s in scalars] == [0, 1, 2]
        assert [s.value for s in scalars] == pytest.approx([line[key] for line in lines], rel=1e-6)


def test_wandb_sink_runs_offline_and_continues_the_same_run(tmp_path: Path, monkeypatch) -> None:
    calls: dict[str, list] = {"init": [], "log": [], "finish": []}

    class Run:
        def log(self, data, step):
            calls["log"].append((step, data))

        def finish(self):
            calls["finish"].append(True)

    stand_in = types.ModuleType("wandb")
    stand_in.init = lambda **kwargs: calls["init"].append(kwargs) or Run()
    monkeypatch.setitem(sys.modules, "wandb", stand_in)
    lines = _fit(tmp_path, "train.trackers=wandb")
    (init,) = calls["init"]
    assert init["mode"] == "offline" and init["dir"] == str(tmp_path) and init["project"] == "nnssl"
    assert init["id"] == wandb_run_id(tmp_path) and init["resume"] == "allow" and init["config"]["method"] == "Toy"
    assert [step for step, _ in calls["log"]] == [0, 1, 2]
    assert [data["train_loss"] for _, data in calls["log"]] == [line["train_loss"] for line in lines]
    assert calls["finish"] == [True]


def test_real_wandb_offline(tmp_path: Path, monkeypatch) -> None:
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_SILENT", "true")
    _fit(tmp_path, "train.trackers=wandb")
    assert list((tmp_path / "wandb").glob("offline-run-*"))


def test_a_tracker_whose_package_is_missing_is_refused_before_the_run(demo_env, monkeypatch, capsys) -> None:
    import importlib.util

    from nnssl.cli.train import main

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    assert main([*QUICK_RUN, "--set", "train.trackers=wandb"]) == 1
    assert "pip install 'nnssl[wandb]'" in capsys.readouterr().err
    assert not any(demo_env.iterdir())
