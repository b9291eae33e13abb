"""SparK's demo preset learns on the shipped demo volumes (ResEncTiny; SparK is CNN-only), in its three upstream
forms (SparK3D densify, EffSpark token-only densify, VariableSpark ratio U(0.6, 0.9)), and the checkpoint carries the
adaptation plan and a network that loads into the downstream ResEnc built from that plan alone.

Measured on 2 shared CPU cores with the settings below (train loss, masked MSE, first epoch -> last epoch):
see documentation/spark.md ("Demo runs").
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
    "train.num_epochs": 5,
    "train.iterations_per_epoch": 10,
    "train.val_iterations": 2,
}


@pytest.mark.slow
@pytest.mark.parametrize(
    "variant",
    [{}, {"method.densify": "token"}, {"method.mask_ratio_range": "0.6,0.9"}],
    ids=["SparK3D", "EffSpark", "VariableSpark"],
)
def test_spark_demo_lowers_its_loss(demo_raw_dataset, nnssl_env, variant: dict) -> None:
    records, checkpoint = run_demo(nnssl_env, "DemoSparK_ResEncTiny", {**SHORT, **variant})
    losses = [r["train_loss"] for r in records]
    print(f"DemoSparK_ResEncTiny {variant}: train loss per epoch {[round(v, 4) for v in losses]}")
    assert len(losses) == 5 and all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.85 * losses[0], losses
    plan = checkpoint["nnssl_adaptation_plan"]
    assert plan["architecture_plans"]["arch_class_name"] == "ResidualEncoderUNet"
    assert not any("densify" in k for k in checkpoint["network_weights"])
