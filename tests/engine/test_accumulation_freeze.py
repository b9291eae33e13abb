"""Gradient accumulation, last-layer freezing by zero lr, warmup_cosine / weight-decay schedules, lr scaling."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from engine_toy import ADAPTATION_PLAN, ToyAE, make_method, toy_config, train_iter_factory, val_iter_factory

from nnssl.config import OptimConfig, TrainConfig
from nnssl.engine import Callback, Trainer
from nnssl.engine.optim import base_lr, lr_at, weight_decay_at


class Recorder(Callback):
    def __init__(self, stop_at_step: int | None = None) -> None:
        self.losses: list[float] = []
        self.stop_at_step = stop_at_step

    def on_step_end(self, trainer, result) -> None:
        self.losses.append(result.loss)
        if self.stop_at_step is not None and result.step == self.stop_at_step:
            trainer.request_stop()


def trainer_for(cfg, folder: Path, method=None, callbacks=(), init_seed: int = 0) -> Trainer:
    return Trainer(
        method or make_method(cfg, init_seed),
        cfg,
        train_iter_factory(cfg),
        val_iter_factory(cfg),
        folder,
        ADAPTATION_PLAN,
        device="cpu",
        callbacks=callbacks,
    )


def test_k_micro_batches_equal_one_step_on_the_concatenated_batch(tmp_path: Path) -> None:
    cfg = toy_config("method.fixed_mask=true", "train.grad_clip=none")
    torch.manual_seed(3)
    micro = [{"image": torch.randn(2, 1, 8, 8, 8)} for _ in range(3)]
    whole = {"image": torch.cat([m["image"] for m in micro])}
    accumulated = trainer_for(cfg, tmp_path / "a")
    single = trainer_for(cfg, tmp_path / "b")
    for _ in range(2):  # two steps, so the momentum buffers take part too
        ra = accumulated.train_step(micro)
        rb = single.train_step(whole)
        assert ra.loss == pytest.approx(rb.loss, rel=1e-6)
    for (name, a), b in zip(accumulated.method.state_dict().items(), single.method.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), name
    assert accumulated.global_step == single.global_step == 2


class FreezingToy(ToyAE):
    """The toy autoencoder whose decoder plays DINO's prototype layer (frozen for one epoch)."""

    def param_groups(self, weight_decay):
        return [
            {"params": list(self.encoder.parameters()), "weight_decay": weight_decay},
            {"params": list(self.decoder.parameters()), "weight_decay": weight_decay, "freeze_epochs": 1},
        ]


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_last_layer_frozen_by_zero_lr_keeps_optimizer_state(tmp_path: Path, optimizer: str) -> None:
    cfg = toy_config("train.iterations_per_epoch=2", f"optim.name={optimizer}", "optim.schedule=constant")
    torch.manual_seed(0)
    trainer = trainer_for(cfg, tmp_path, method=FreezingToy(cfg.method_cfg, None, cfg.train.patch_size))
    decoder0 = [p.detach().clone() for p in trainer.method.decoder.parameters()]
    encoder0 = [p.detach().clone() for p in trainer.method.encoder.parameters()]
    batches = train_iter_factory(cfg)(0)
    for _ in range(2):  # epoch 0
        trainer.train_step(next(batches))
    assert all(torch.equal(a, b) for a, b in zip(decoder0, trainer.method.decoder.parameters()))
    assert all(not torch.equal(a, b) for a, b in zip(encoder0, trainer.method.encoder.parameters()))
    assert trainer.optimizer.param_groups[1]["lr"] == 0.0
    state = trainer.optimizer.state[next(iter(trainer.method.decoder.parameters()))]
    moment = "momentum_buffer" if optimizer == "sgd" else "exp_avg"
    kept = state[moment].clone()
    assert kept.abs().sum() > 0  # the frozen layer's moments keep accumulating (lr zeroing, not grad removal)
    trainer.train_step(next(batches))  # epoch 1: unfrozen
    assert trainer.optimizer.param_groups[1]["lr"] == pytest.approx(cfg.optim.lr)
    assert any(not torch.equal(a, b) for a, b in zip(decoder0, trainer.method.decoder.parameters()))


@pytest.mark.parametrize("stop_at_step", [1, 4])
def test_resume_with_accumulation_is_exact(tmp_path: Path, stop_at_step: int) -> None:
    cfg = toy_config("train.grad_accumulation_steps=3", "train.num_epochs=2", "train.iterations_per_epoch=3")
    full = Recorder()
    uninterrupted = trainer_for(cfg, tmp_path / "a", callbacks=[full])
    assert uninterrupted.fit()
    assert len(full.losses) == 6 and uninterrupted.global_step == 6
    first = Recorder(stop_at_step=stop_at_step)
    assert not trainer_for(cfg, tmp_path / "b", callbacks=[first]).fit()
    torch.manual_seed(99)
    second = Recorder()
    resumed = trainer_for(cfg, tmp_path / "b", callbacks=[second], init_seed=5)
    resumed.load_checkpoint(tmp_path / "b" / "checkpoint_latest.pth")
    assert resumed.fit()
    assert first.losses + second.losses == full.losses
    for (k, a), b in zip(uninterrupted.method.state_dict().items(), resumed.method.state_dict().values()):
        assert torch.equal(a, b), k


def test_warmup_cosine_weight_decay_cosine_and_sqrt_lr_rule() -> None:
    train = TrainConfig(num_epochs=10, iterations_per_epoch=10, batch_size=4, grad_accumulation_steps=16)
    optim = OptimConfig(lr=4e-3, schedule="warmup_cosine", warmup_epochs=2, final_lr=1e-6, lr_scaling="sqrt1024")
    lr0 = 4e-3 * math.sqrt(64 / 1024)
    assert base_lr(optim, train) == pytest.approx(1e-3)
    assert lr_at(0, optim, train) == pytest.approx(lr0 / 20)
    assert lr_at(19, optim, train) == pytest.approx(lr0)
    assert lr_at(60, optim, train) == pytest.approx(1e-6 + (lr0 - 1e-6) * 0.5)
    assert lr_at(99, optim, train) == pytest.approx(1e-6 + (lr0 - 1e-6) * 0.5 * (1 + math.cos(math.pi * 79 / 80)))
    wd = OptimConfig(weight_decay=0.04, weight_decay_end=0.2)
    assert weight_decay_at(0, wd, train) == pytest.approx(0.04)
    assert weight_decay_at(99, wd, train) == pytest.approx(0.2)
    assert weight_decay_at(0, OptimConfig(weight_decay=0.04), train) == 0.04


def test_weight_decay_schedule_spares_groups_without_decay(tmp_path: Path) -> None:
    cfg = toy_config("optim.weight_decay=0.04", "optim.weight_decay_end=0.2", "train.iterations_per_epoch=2")

    class TwoGroups(ToyAE):
        def param_groups(self, weight_decay):
            return [
                {"params": list(self.encoder.parameters()), "weight_decay": weight_decay},
                {"params": list(self.decoder.parameters()), "weight_decay": 0.0},
            ]

    torch.manual_seed(0)
    trainer = trainer_for(cfg, tmp_path, method=TwoGroups(cfg.method_cfg, None, cfg.train.patch_size))
    batches = train_iter_factory(cfg)(0)
    for _ in range(3):
        trainer.train_step(next(batches))
    total = cfg.train.num_epochs * cfg.train.iterations_per_epoch
    expected = 0.2 + (0.04 - 0.2) * 0.5 * (1 + math.cos(math.pi * 2 / (total - 1)))
    assert trainer.optimizer.param_groups[0]["weight_decay"] == pytest.approx(expected)
    assert trainer.optimizer.param_groups[1]["weight_decay"] == 0.0
