"""SimMIM's demo presets learn on the shipped demo volumes (both backbones), and the checkpoint's network loads into the
downstream network built from its adaptation plan alone.

Measured on 2 shared CPU cores with the settings below (train loss, masked L1, first epoch -> last epoch):
see documentation/simmim.md ("Demo runs").
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "methods"))
from contrastive_demo import run_demo  # noqa: E402

SHORT = {
    "train.patch_size": "32,32,32",
    "train.num_epochs": 8,
    "train.iterations_per_epoch": 10,
    "train.val_iterations": 2,
}


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["DemoSimMIM_ResEncTiny", "DemoSimMIM_PrimusTiny"])
def test_simmim_demo_lowers_its_loss(demo_raw_dataset, nnssl_env, preset: str) -> None:
    records, checkpoint = run_demo(nnssl_env, preset, SHORT)
    losses = [r["train_loss"] for r in records]
    print(f"{preset}: train loss per epoch {[round(v, 4) for v in losses]}")
    assert len(losses) == 8 and all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.85 * losses[0], losses
    assert checkpoint["nnssl_adaptation_plan"]["pretrain_plan"]["configurations"]["onemmiso"]["patch_size"] == [32] * 3
