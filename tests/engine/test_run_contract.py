"""What a run promises: --c continues the stored run, from its most advanced checkpoint; identical fresh runs are
identical; one run per folder; upstream's flags; filters and environment variables (demo data, CPU, in-process)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from run_helpers import QUICK_RUN, metrics, run_folder

from nnssl.cli.train import main
from nnssl.engine import Trainer
from nnssl.engine.run_lock import LOCK_FILE
from nnssl.serialization import TEMP_MARKER


@pytest.fixture
def stop_at_step(monkeypatch: pytest.MonkeyPatch):
    """``stop_at_step(n)``: the next runs request a stop after global step ``n`` (``None``: no stop)."""
    original = Trainer.train_step
    target: dict[str, int | None] = {"step": None}

    def train_step(self, batch):
        result = original(self, batch)
        if target["step"] is not None and result.step == target["step"]:
            self.request_stop()
        return result

    monkeypatch.setattr(Trainer, "train_step", train_step)

    def set_step(step: int | None) -> None:
        target["step"] = step

    return set_step


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["method_state"]


def _same_weights(a: Path, b: Path) -> bool:
    wa, wb = _weights(a), _weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_bare_resume_continues_the_stored_configuration(demo_env, monkeypatch, stop_at_step, caplog) -> None:
    """Started with --set num_epochs=2 / 3 steps, stopped, continued with a bare --c: the run of the STORED config."""
    run = [*QUICK_RUN, "--set", "train.num_epochs=2"]
    monkeypatch.setenv("nnssl_results", str(demo_env / "uninterrupted"))
    assert main(run) == 0
    reference = run_folder(demo_env / "uninterrupted")

    monkeypatch.setenv("nnssl_results", str(demo_env / "interrupted"))
    stop_at_step(4)
    assert main(run) == 0
    folder = run_folder(demo_env / "interrupted")
    assert torch.load(folder / "checkpoint_latest.pth", weights_only=True)["global_step"] == 5
    stop_at_step(None)
    with caplog.at_level(logging.INFO, logger="nnssl"):
        assert main(["1", "onemmiso", "-tr", "DemoMAE_ResEncTiny", "-device", "cpu", "--c"]) == 0
    assert "--c: using the configuration stored in" in caplog.text
    assert "differs from preset DemoMAE_ResEncTiny as defined now" in caplog.text  # e.g. 12 epochs x 20 steps
    final = torch.load(folder / "checkpoint_final.pth", weights_only=True)
    assert (final["current_epoch"], final["global_step"]) == (2, 6)  # not the preset's 12 x 20
    assert [m["train_loss"] for m in metrics(folder)] == [m["train_loss"] for m in metrics(reference)]
    assert [m["lr"] for m in metrics(folder)] == [m["lr"] for m in metrics(reference)]
    assert _same_weights(folder / "checkpoint_final.pth", reference / "checkpoint_final.pth")


def test_val_and_val_best_report_the_checkpoints_validation_loss(demo_env, capsys) -> None:
    folder = run_folder(demo_env)
    assert main([*QUICK_RUN, "--val_best"]) == 1  # nothing to validate yet
    assert "--val_best validates" in capsys.readouterr().err
    assert main([*QUICK_RUN, "--set", "train.num_epochs=2"]) == 0
    history = metrics(folder)
    assert main(["1", "onemmiso", "-tr", "DemoMAE_ResEncTiny", "-device", "cpu", "--val"]) == 0
    final = json.loads((folder / "validation_checkpoint_final.json").read_text())
    assert (final["epoch"], final["global_step"]) == (2, 6)
    assert final["val_loss"] == pytest.approx(history[-1]["val_loss"], rel=1e-6)  # same weights, same crops
    assert main(["1", "onemmiso", "-tr", "DemoMAE_ResEncTiny", "-device", "cpu", "--val_best"]) == 0
    best = json.loads((folder / "validation_checkpoint_best.json").read_text())
    assert best["val_loss"] == pytest.approx(min(m["val_loss"] for m in history), rel=1e-6)
    assert torch.load(folder / "checkpoint_final.pth", weights_only=True)["global_step"] == 6  # nothing trained


def test_extended_then_interrupted_run_resumes_from_the_most_advanced_checkpoint(demo_env, stop_at_step) -> None:
    folder = run_folder(demo_env)
    assert main([*QUICK_RUN, "--set", "train.num_epochs=1"]) == 0  # checkpoint_final: epoch 1, step 3
    stop_at_step(7)
    assert main([*QUICK_RUN, "--c", "--set", "train.num_epochs=3"]) == 0  # extended, stopped in epoch 2
    latest = torch.load(folder / "checkpoint_latest.pth", weights_only=True)
    assert (latest["current_epoch"], latest["global_step"]) == (2, 8)
    assert torch.load(folder / "checkpoint_final.pth", weights_only=True)["global_step"] == 3
    leftover = folder / f"checkpoint_latest{TEMP_MARKER}-deadbeef.pth"
    leftover.write_bytes(b"half a checkpoint of a killed save")
    stop_at_step(None)
    assert main(["1", "onemmiso", "-tr", "DemoMAE_ResEncTiny", "-device", "cpu", "--c"]) == 0
    final = torch.load(folder / "checkpoint_final.pth", weights_only=True)
    assert (final["current_epoch"], final["global_step"]) == (3, 9)  # continued from step 8, not from step 3
    assert [m["epoch"] for m in metrics(folder)] == [0, 1, 2]
    assert not leftover.exists()


def test_a_used_folder_refuses_a_new_run_and_unsafe_changes_on_continuing(demo_env, capsys) -> None:
    folder = run_folder(demo_env)
    assert main([*QUICK_RUN, "--set", "train.num_epochs=1"]) == 0
    before = (folder / "checkpoint_final.pth").read_bytes()
    capsys.readouterr()
    assert main([*QUICK_RUN, "--set", "train.num_epochs=1"]) == 1
    err = capsys.readouterr().err
    assert "already holds checkpoints of an earlier run: checkpoint_final.pth (epoch 1, step 3)" in err and "--c" in err
    assert main([*QUICK_RUN, "--c", "--set", "optim.lr=0.5", "--set", "train.num_epochs=2"]) == 1
    err = capsys.readouterr().err
    assert "optim.lr: 0.01 -> 0.5" in err and "train.num_epochs" not in err.split("may change only")[0]
    assert (folder / "checkpoint_final.pth").read_bytes() == before
    assert main([*QUICK_RUN, "--c", "--set", "train.num_epochs=2", "--set", "train.val_iterations=0"]) == 0
    assert torch.load(folder / "checkpoint_final.pth", weights_only=True)["global_step"] == 6


def test_identical_fresh_runs_are_identical_and_config_reruns_exactly(demo_env, monkeypatch) -> None:
    """A fresh run and a re-run of its config.json (another folder, other global RNG state): bit-identical on CPU."""
    monkeypatch.setenv("nnssl_results", str(demo_env / "a"))
    torch.manual_seed(1)
    assert main([*QUICK_RUN, "--set", "train.num_epochs=2", "--set", "optim.lr=0.01"]) == 0
    first = run_folder(demo_env / "a")
    monkeypatch.setenv("nnssl_results", str(demo_env / "b"))
    torch.manual_seed(2)  # whatever the caller did before must not matter
    assert main(["1", "onemmiso", "-device", "cpu", "--config", str(first / "config.json")]) == 0
    second = run_folder(demo_env / "b")
    losses = [[m["train_loss"] for m in metrics(f)] for f in (first, second)]
    assert losses[0] == losses[1] and len(losses[0]) == 2
    assert _same_weights(first / "checkpoint_final.pth", second / "checkpoint_final.pth")
    assert (second / "config.json").read_text() == (first / "config.json").read_text()


def test_config_flag_refuses_a_preset_and_a_missing_file(demo_env, capsys) -> None:
    assert main(["1", "onemmiso", "-device", "cpu", "--config", str(demo_env / "nope.json")]) == 1
    assert "--config" in capsys.readouterr().err and not any(demo_env.iterdir())
    assert main(["1", "onemmiso", "-tr", "BaseMAETrainer", "--config", str(demo_env / "nope.json")]) == 1
    assert "leave out -tr" in capsys.readouterr().err


def test_filters_disabled_checkpointing_npz_and_the_lock(demo_env, capsys, caplog) -> None:
    folder = run_folder(demo_env)
    run = [*QUICK_RUN, "--set", "train.num_epochs=2", "--set", "data.filters=modality=T1w"]
    with caplog.at_level(logging.WARNING):
        assert main([*run, "--disable_checkpointing", "--npz"]) == 0
    assert "--npz has no effect" in caplog.text
    assert not list(folder.glob("checkpoint_*")) and [m["epoch"] for m in metrics(folder)] == [0, 1]
    log = next(folder.glob("training_log_*.txt")).read_text()
    assert "data.filters ['modality=T1w']: 4 of 5 images kept (removed: 1 by ModalityFilter(['T1w']))" in log
    assert (folder / LOCK_FILE).read_text() == ""  # released: no holder recorded
    capsys.readouterr()
    other = [*QUICK_RUN[:3], "DemoMAE_PrimusTiny", *QUICK_RUN[4:]]
    assert main([*other, "--set", "data.filters=iqs<=2.5"]) == 1
    assert "has no image-quality scores" in capsys.readouterr().err
    assert main([*other, "--set", "data.filters=modality=FLAIR"]) == 1
    assert "keep none of the 5 preprocessed images" in capsys.readouterr().err
    assert not run_folder(demo_env, "DemoMAE_PrimusTiny").exists()


def test_upstream_environment_variables(monkeypatch) -> None:
    from nnssl.engine.run_config import new_run_config

    monkeypatch.setenv("nnUNet_n_proc_DA", "0")  # the demo preset says 1 worker
    monkeypatch.setenv("nnUNet_compile", "T")
    cfg = new_run_config("DemoMAE_ResEncTiny", [])
    assert (cfg.data.num_workers, cfg.train.compile) == (0, True)
    cfg = new_run_config("DemoMAE_ResEncTiny", ["train.compile=false", "data.num_workers=3"])  # --set wins
    assert (cfg.data.num_workers, cfg.train.compile) == (3, False)
    monkeypatch.setenv("nnUNet_compile", "no")
    monkeypatch.delenv("nnUNet_n_proc_DA")
    cfg = new_run_config("DemoMAE_ResEncTiny", [])
    assert (cfg.data.num_workers, cfg.train.compile) == (1, False)


def test_compile_wraps_the_model_and_checkpoints_keep_plain_keys(tmp_path, monkeypatch) -> None:
    from engine_toy import ADAPTATION_PLAN, make_method, toy_config, train_iter_factory, val_iter_factory

    compiled = []

    def fake_compile(model):
        compiled.append(model)
        return model

    monkeypatch.setattr(torch, "compile", fake_compile)
    cfg = toy_config("train.compile=true", "train.num_epochs=1")
    method = make_method(cfg)
    trainer = Trainer(method, cfg, train_iter_factory(cfg), val_iter_factory(cfg), tmp_path, ADAPTATION_PLAN)
    assert compiled == [method]
    assert trainer.fit()
    assert set(torch.load(tmp_path / "checkpoint_final.pth", weights_only=True)["network_weights"]) == {
        "stem.weight",
        "stem.bias",
    }
