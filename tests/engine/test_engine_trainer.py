"""Trainer behaviour with a toy method on CPU: resume equals uninterrupted, NaN guard, checkpoints, logs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from engine_toy import (
    ADAPTATION_PLAN,
    make_method,
    synthetic_batches,
    toy_config,
    train_iter_factory,
    val_iter_factory,
)

from nnssl.engine import Callback, NonFiniteTrainingError, ResumeMismatchError, Trainer
from nnssl.engine.checkpoint import CheckpointError, find_resume_checkpoint, load_checkpoint
from nnssl.serialization import TEMP_MARKER


class Recorder(Callback):
    def __init__(self, stop_at_step: int | None = None) -> None:
        self.losses: list[float] = []
        self.results = []
        self.stop_at_step = stop_at_step

    def on_step_end(self, trainer, result) -> None:
        self.losses.append(result.loss)
        self.results.append(result)
        if self.stop_at_step is not None and result.step == self.stop_at_step:
            trainer.request_stop()


def make_trainer(cfg, folder: Path, init_seed: int = 0, callbacks=()) -> Trainer:
    return Trainer(
        make_method(cfg, init_seed),
        cfg,
        train_iter_factory(cfg),
        val_iter_factory(cfg),
        folder,
        ADAPTATION_PLAN,
        device="cpu",
        callbacks=callbacks,
    )


@pytest.mark.parametrize("stop_at_step", [2, 3])
def test_resume_reproduces_uninterrupted_run(tmp_path: Path, stop_at_step: int) -> None:
    cfg = toy_config("train.num_epochs=2", "train.iterations_per_epoch=3")
    full = Recorder()
    uninterrupted = make_trainer(cfg, tmp_path / "a", callbacks=[full])
    assert uninterrupted.fit()
    assert len(full.losses) == 6

    first = Recorder(stop_at_step=stop_at_step)
    interrupted = make_trainer(cfg, tmp_path / "b", callbacks=[first])
    assert not interrupted.fit()
    latest = tmp_path / "b" / "checkpoint_latest.pth"
    assert find_resume_checkpoint(tmp_path / "b") == latest
    torch.manual_seed(777)  # the resumed process starts with other RNG state and other initial weights
    second = Recorder()
    resumed = make_trainer(cfg, tmp_path / "b", init_seed=5, callbacks=[second])
    resumed.load_checkpoint(latest)
    assert resumed.fit()

    assert first.losses + second.losses == full.losses  # bit-exact, step by step
    for (k, a), b in zip(uninterrupted.method.state_dict().items(), resumed.method.state_dict().values()):
        assert torch.equal(a, b), k
    assert uninterrupted.logs["val_losses"] == resumed.logs["val_losses"]
    lines = [json.loads(x) for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines] == [0, 1]


def test_validation_is_deterministic_and_does_not_disturb_training(tmp_path: Path) -> None:
    cfg = toy_config()
    trainer = make_trainer(cfg, tmp_path)
    state = torch.get_rng_state()
    v1, v2 = trainer.validate(), trainer.validate()
    assert v1 == v2 and math.isfinite(v1)
    assert torch.equal(state, torch.get_rng_state())
    assert trainer.method.training


def _snapshot(trainer: Trainer) -> tuple[dict, dict]:
    weights = {k: v.clone() for k, v in trainer.method.state_dict().items()}
    optim = {k: {n: t.clone() for n, t in s.items()} for k, s in trainer.optimizer.state_dict()["state"].items()}
    return weights, optim


def _assert_same(a: tuple[dict, dict], b: tuple[dict, dict]) -> None:
    assert a[0].keys() == b[0].keys() and a[1].keys() == b[1].keys()
    for k in a[0]:
        assert torch.equal(a[0][k], b[0][k]), k
    for k in a[1]:
        for n in a[1][k]:
            assert torch.equal(a[1][k][n], b[1][k][n]), (k, n)


@pytest.mark.parametrize("in_gradient", [False, True])
def test_nonfinite_step_is_skipped_without_touching_state(tmp_path: Path, in_gradient: bool) -> None:
    flag = "true" if in_gradient else "false"
    cfg = toy_config("method.nan_at_calls=2", f"method.nan_in_gradient={flag}")
    trainer = make_trainer(cfg, tmp_path)
    batches = synthetic_batches(0, 2)
    for _ in range(2):
        assert not trainer.train_step(next(batches)).skipped
    before = _snapshot(trainer)
    result = trainer.train_step(next(batches))
    assert result.skipped and result.nonfinite == ("gradient norm" if in_gradient else "loss")
    _assert_same(before, _snapshot(trainer))
    assert trainer.global_step == 3 and trainer.consecutive_nonfinite == 1
    ok = trainer.train_step(next(batches))
    assert not ok.skipped and math.isfinite(ok.loss) and trainer.consecutive_nonfinite == 0
    with pytest.raises(AssertionError):
        _assert_same(before, _snapshot(trainer))


def test_skipped_steps_are_counted_in_metrics(tmp_path: Path) -> None:
    cfg = toy_config("method.nan_at_calls=1,4", "train.num_epochs=2")
    assert make_trainer(cfg, tmp_path).fit()
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [x["skipped_steps"] for x in lines] == [1, 1]
    assert all(math.isfinite(x["train_loss"]) and "train/masked_fraction" in x for x in lines)
    assert (tmp_path / "progress.png").stat().st_size > 1000


def test_consecutive_nonfinite_steps_stop_the_run(tmp_path: Path) -> None:
    cfg = toy_config("method.nan_at_calls=1,2,3", "train.max_consecutive_nonfinite=3", "train.iterations_per_epoch=5")
    with pytest.raises(NonFiniteTrainingError) as info:
        make_trainer(cfg, tmp_path).fit()
    message = str(info.value)
    assert "3 consecutive steps had a non-finite loss" in message
    assert "last finite training loss" in message and "at step 0" in message
    assert "optim.lr=" in message and "train.precision=fp32" in message


def test_checkpoint_contents_and_weights_only(tmp_path: Path) -> None:
    cfg = toy_config("train.num_epochs=1")
    trainer = make_trainer(cfg, tmp_path)
    assert trainer.fit()
    path = tmp_path / "checkpoint_final.pth"
    checkpoint = torch.load(path, weights_only=True)
    assert set(checkpoint["network_weights"]) == {"stem.weight", "stem.bias"}
    assert checkpoint["nnssl_adaptation_plan"] == ADAPTATION_PLAN
    assert checkpoint["current_epoch"] == 1 and checkpoint["global_step"] == 3
    assert checkpoint["config"]["method"] == "Toy" and checkpoint["config"]["train"]["patch_size"] == [8, 8, 8]
    assert len(checkpoint["logging"]["train_losses"]) == 1
    assert {"python", "numpy", "torch", "cuda"} <= set(checkpoint["rng_state"])
    assert "optimizer_state" in checkpoint and "grad_scaler_state" in checkpoint and "method_state" in checkpoint
    assert (tmp_path / "checkpoint_best.pth").is_file()
    assert json.loads((tmp_path / "config.json").read_text())["preset"] == "ToyPreset"
    assert not list(tmp_path.glob(f"*{TEMP_MARKER}*"))


def test_resume_picks_the_most_advanced_checkpoint_and_ignores_temporary_files(tmp_path: Path) -> None:
    (tmp_path / f"checkpoint_final{TEMP_MARKER}-abcd.pth").write_bytes(b"partial")
    assert find_resume_checkpoint(tmp_path) is None
    for name, step in (("checkpoint_best.pth", 5), ("checkpoint_latest.pth", 40), ("checkpoint_final.pth", 10)):
        torch.save({"global_step": step, "current_epoch": step // 5}, tmp_path / name)
    assert find_resume_checkpoint(tmp_path).name == "checkpoint_latest.pth"  # step 40 beats final's 10
    torch.save({"global_step": 40, "current_epoch": 8}, tmp_path / "checkpoint_final.pth")
    assert find_resume_checkpoint(tmp_path).name == "checkpoint_final.pth"  # a tie goes to final


def test_a_more_advanced_checkpoint_is_never_overwritten(tmp_path: Path) -> None:
    trainer = make_trainer(toy_config("train.num_epochs=1"), tmp_path)
    torch.save({"global_step": 40, "current_epoch": 8}, tmp_path / "checkpoint_latest.pth")
    before = (tmp_path / "checkpoint_latest.pth").read_bytes()
    with pytest.raises(CheckpointError, match="Refusing to overwrite .*step 40"):
        trainer.save_checkpoint("checkpoint_latest.pth")
    assert (tmp_path / "checkpoint_latest.pth").read_bytes() == before


def test_interrupted_save_leaves_previous_checkpoint_intact(tmp_path: Path, monkeypatch) -> None:
    cfg = toy_config("train.num_epochs=1")
    trainer = make_trainer(cfg, tmp_path)
    good = trainer.save_checkpoint("checkpoint_latest.pth")
    original = good.read_bytes()

    def failing_save(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError):
        trainer.save_checkpoint("checkpoint_latest.pth")
    assert good.read_bytes() == original
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_latest.pth"]


def test_corrupted_checkpoint_is_named_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint_latest.pth"
    path.write_bytes(b"\x80\x02not a checkpoint")
    with pytest.raises(CheckpointError, match="checkpoint_latest.pth"):
        load_checkpoint(path)
    assert path.read_bytes() == b"\x80\x02not a checkpoint"


def test_resume_with_different_config_lists_differences(tmp_path: Path) -> None:
    trainer = make_trainer(toy_config("train.num_epochs=1"), tmp_path)
    path = trainer.save_checkpoint("checkpoint_latest.pth")
    other = make_trainer(toy_config("train.batch_size=4", "train.patch_size=16,16,16"), tmp_path / "o")
    with pytest.raises(ResumeMismatchError) as info:
        other.load_checkpoint(path)
    assert "train.batch_size: checkpoint=2 now=4" in str(info.value)
    assert "train.patch_size" in str(info.value)


def test_sigterm_saves_latest_and_stops_cleanly(tmp_path: Path) -> None:
    import os
    import signal

    class Kill(Callback):
        def on_step_end(self, trainer, result) -> None:
            if result.step == 1:
                os.kill(os.getpid(), signal.SIGTERM)

    previous = signal.getsignal(signal.SIGTERM)
    trainer = make_trainer(toy_config(), tmp_path, callbacks=[Kill()])
    assert trainer.fit() is False
    assert signal.getsignal(signal.SIGTERM) == previous
    checkpoint = load_checkpoint(tmp_path / "checkpoint_latest.pth")
    assert checkpoint["global_step"] == 2 and checkpoint["epoch_progress"]["iteration"] == 2
    assert trainer.stopper.signal_name == "SIGTERM"


def test_training_logs_its_first_step_at_once_without_a_terminal(tmp_path, caplog) -> None:
    trainer = make_trainer(toy_config("train.num_epochs=1", "train.iterations_per_epoch=3"), tmp_path)
    with caplog.at_level("INFO", logger="nnssl"):
        assert trainer.fit()
    messages = [r.getMessage() for r in caplog.records]
    first = next(i for i, m in enumerate(messages) if m.startswith("First step done; epoch 0: step 1 of 3"))
    assert first < next(i for i, m in enumerate(messages) if m.startswith("Epoch 0:"))
