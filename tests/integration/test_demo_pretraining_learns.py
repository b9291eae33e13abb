"""End to end on the shipped real volumes: preprocess, then a short MAE pre-training whose loss falls."""

from __future__ import annotations

import json

import pytest
import torch

from nnssl.architectures.adaptation_plan import verify_adaptation_plan
from nnssl.cli.plan_and_preprocess import main as plan_and_preprocess
from nnssl.cli.train import main as train


@pytest.mark.parametrize("preset", ["DemoMAE_ResEncTiny", "DemoMAE_PrimusTiny"])
def test_short_mae_run_on_demo_data_lowers_the_training_loss(demo_raw_dataset, nnssl_env, preset) -> None:
    assert plan_and_preprocess(["-d", "1", "-c", "onemmiso", "-np", "1", "-npfp", "1", "--no_progress"]) == 0
    overrides = {
        "train.patch_size": "32,32,32",
        "train.num_epochs": 5,
        "train.iterations_per_epoch": 10,
        "train.val_iterations": 2,
        "data.num_workers": 0,
    }
    args = ["1", "onemmiso", "-tr", preset, "-device", "cpu"]
    for key, value in overrides.items():
        args += ["--set", f"{key}={value}"]
    assert train(args) == 0

    folder = nnssl_env["nnssl_results"] / "Dataset001_Demo" / f"{preset}__nnsslPlans__onemmiso" / "fold_all"
    epochs = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    losses = [e["train_loss"] for e in epochs]
    assert len(losses) == 5 and all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.85 * losses[0], losses

    checkpoint = torch.load(folder / "checkpoint_final.pth", weights_only=True)
    verify_adaptation_plan(checkpoint["nnssl_adaptation_plan"], checkpoint["network_weights"])
