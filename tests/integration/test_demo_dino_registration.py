"""The registration recipe end to end on the demo data: DINO pre-training of a Primus with 4^3 tokens, registration
Dice of the shipped pair every few epochs selecting ``checkpoint_best``, and ``nnssl_register`` with the result."""

from __future__ import annotations

import json
import math

import pytest
import torch

from nnssl.cli.plan_and_preprocess import main as plan_and_preprocess
from nnssl.cli.register import main as register
from nnssl.cli.train import main as train
from nnssl.evaluation.eval_set import load_eval_set

pytestmark = pytest.mark.slow


def test_dino_registration_recipe_selects_checkpoints_by_registration_dice(demo_raw_dataset, nnssl_env, tmp_path):
    assert plan_and_preprocess(["-d", "1", "-c", "onemmiso", "-np", "1", "-npfp", "1", "--no_progress"]) == 0
    preset = "DemoDINO_PrimusTiny4Reg"
    overrides = {
        "train.num_epochs": 4,
        "train.iterations_per_epoch": 5,
        "train.val_iterations": 1,
        "data.num_workers": 0,
        "train.eval_every_n_epochs": 2,
        "eval.registration_set": "demo_registration",
        "eval.registration_spacing": 3.0,
        "eval.select_best_by": "registration/mean_dice",
    }
    args = ["1", "onemmiso", "-tr", preset, "-device", "cpu"]
    for key, value in overrides.items():
        args += ["--set", f"{key}={value}"]
    assert train(args) == 0

    folder = nnssl_env["nnssl_results"] / "Dataset001_Demo" / f"{preset}__nnsslPlans__onemmiso" / "fold_all"
    epochs = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    scores = [r["registration/mean_dice"] for r in epochs if "registration/mean_dice" in r]
    assert len(scores) == 2 and all(0.3 < s < 1.0 for s in scores), scores  # the affine step alone gives ~0.6
    assert all(math.isfinite(r["registration/sdlogj"]) for r in epochs if "registration/sdlogj" in r)
    best = torch.load(folder / "checkpoint_best.pth", weights_only=True)
    assert best["best_eval_score"] == pytest.approx(max(scores))
    assert best["nnssl_adaptation_plan"]["architecture_plans"]["arch_kwargs"]["patch_embed_size"] == [4, 4, 4]

    pair = load_eval_set("demo_registration")
    fixed, moving = pair.case("icbm152"), pair.case("itk_subject")
    out = tmp_path / "registered"
    argv = [fixed.image, moving.image, "-c", str(folder / "checkpoint_best.pth"), "--affine", "--spacing", "3"]
    argv += ["--fixed_label", fixed.label, "--moving_label", moving.label, "--moving_mask", moving.mask]
    argv += ["-o", str(out), "-device", "cpu"]
    assert register(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["features"].startswith("encoder")
    assert metrics["mean_dice_after"] > 0.3
