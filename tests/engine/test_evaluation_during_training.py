"""Evaluation during pre-training: probe scores per evaluated epoch in metrics.jsonl, the text log and progress.png,
``checkpoint_best.pth`` chosen by the score, and configuration errors before anything starts."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch

from nnssl.cli.train import main
from nnssl.config import ConfigError
from nnssl.presets import resolve_config

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "evaluation"))
from helpers import synthetic_eval_set  # noqa: E402
from run_helpers import QUICK_RUN, metrics, run_folder  # noqa: E402


def test_probe_scores_are_logged_and_select_the_best_checkpoint(demo_env, tmp_path):
    (tmp_path / "eval").mkdir()
    eval_set = synthetic_eval_set(tmp_path / "eval")
    run = [
        *QUICK_RUN,
        "--set",
        "train.num_epochs=3",
        "--set",
        "train.eval_every_n_epochs=2",
        "--set",
        f"eval.set={eval_set}",
        "--set",
        "eval.select_best_by=probe/mean_dice",
    ]
    assert main(run) == 0
    folder = run_folder(demo_env)
    lines = metrics(folder)
    evaluated = [line["epoch"] for line in lines if "probe/mean_dice" in line]
    assert evaluated == [1, 2]  # every 2nd epoch and the last
    scores = [line["probe/mean_dice"] for line in lines if "probe/mean_dice" in line]
    assert all(0.0 <= s <= 1.0 for s in scores)
    assert {"probe/dice_bright", "probe/dice_dark"} <= set(lines[1])
    best = torch.load(folder / "checkpoint_best.pth", weights_only=True)
    assert math.isclose(best["best_eval_score"], max(scores), rel_tol=1e-9)
    log = next(folder.glob("training_log_*.txt")).read_text()
    assert "Probe on blobs: mean Dice" in log and "New best probe/mean_dice" in log
    final = torch.load(folder / "checkpoint_final.pth", weights_only=True)
    assert final["logging"]["probe_mean_dice"][0] is None and final["logging"]["probe_mean_dice"][1] == scores[0]


def test_evaluation_settings_are_checked_before_training():
    with pytest.raises(ConfigError, match="eval.set"):
        resolve_config("DemoMAE_ResEncTiny", ["train.eval_every_n_epochs=2"])
    with pytest.raises(ConfigError, match="eval.select_best_by"):
        resolve_config("DemoMAE_ResEncTiny", ["eval.select_best_by=probe/mean_dice"])
    with pytest.raises(ConfigError, match="one of val_loss, probe/mean_dice"):
        resolve_config("DemoMAE_ResEncTiny", ["train.eval_every_n_epochs=1", "eval.set=demo", "eval.select_best_by=x"])


def test_full_size_presets_do_not_evaluate():
    for name in ("BaseMAETrainer", "BaseEvaMAETrainer"):
        assert resolve_config(name).train.eval_every_n_epochs == 0


def test_a_missing_evaluation_set_stops_before_any_run_folder(demo_env, tmp_path):
    run = [*QUICK_RUN, "--set", "train.eval_every_n_epochs=1", "--set", f"eval.set={tmp_path / 'nope.json'}"]
    assert main(run) == 1
    assert not run_folder(demo_env).exists()


def test_registration_scores_are_logged_and_select_the_best_checkpoint(demo_env, tmp_path):
    (tmp_path / "eval").mkdir()
    path = synthetic_eval_set(tmp_path / "eval")
    data = json.loads(path.read_text())
    data["pairs"] = [{"fixed": "case1", "moving": "case0"}]
    path.write_text(json.dumps(data))
    run = [
        *QUICK_RUN,
        "--set",
        "train.num_epochs=2",
        "--set",
        "train.eval_every_n_epochs=1",
        "--set",
        f"eval.registration_set={path}",
        "--set",
        "eval.select_best_by=registration/mean_dice",
    ]
    assert main(run) == 0
    folder = run_folder(demo_env)
    lines = metrics(folder)
    scores = [line["registration/mean_dice"] for line in lines]
    assert len(scores) == 2 and all(0.0 <= s <= 1.0 for s in scores)
    assert "probe/mean_dice" not in lines[0]  # no eval.set: registration only
    assert {"registration/sdlogj", "registration/folding_percent", "registration/dice_bright"} <= set(lines[0])
    best = torch.load(folder / "checkpoint_best.pth", weights_only=True)
    assert math.isclose(best["best_eval_score"], max(scores), rel_tol=1e-9)
    log = next(folder.glob("training_log_*.txt")).read_text()
    assert "Registration on blobs (1 pair(s)): mean Dice" in log


def test_registration_settings_are_checked_before_training():
    with pytest.raises(ConfigError, match="eval.registration_set"):
        resolve_config(
            "DemoMAE_ResEncTiny",
            ["train.eval_every_n_epochs=1", "eval.set=demo", "eval.select_best_by=registration/mean_dice"],
        )
    with pytest.raises(ConfigError, match="a set with 'pairs' to register"):
        resolve_config("DemoMAE_ResEncTiny", ["train.eval_every_n_epochs=1", "eval.registration_set=demo"])
    overrides = ["train.eval_every_n_epochs=1", "eval.registration_set=demo_registration"]
    cfg = resolve_config("DemoMAE_ResEncTiny", overrides)
    assert cfg.eval.registration_set == "demo_registration"
