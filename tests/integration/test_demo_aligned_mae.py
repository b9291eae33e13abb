"""End to end on the shipped demo volumes: AlignedMAE presets train, and start from an MAE checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from nnssl.architectures.adaptation_plan import verify_adaptation_plan
from nnssl.cli.plan_and_preprocess import main as plan_and_preprocess
from nnssl.cli.train import main as train

SMALL = {"train.val_iterations": 1, "data.num_workers": 0}
CROPS = {"train.patch_size": "52,52,52", "method.crop_size": "32,32,32"}


def _train(preset: str, overrides: dict, *extra: str) -> Path:
    args = ["1", "onemmiso", "-tr", preset, "-device", "cpu", *extra]
    for key, value in {**SMALL, **overrides}.items():
        args += ["--set", f"{key}={value}"]
    assert train(args) == 0
    return Path(f"Dataset001_Demo/{preset}__nnsslPlans__onemmiso/fold_all")


def _epochs(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow  # 2-3 min per preset on 2 shared CPU cores
@pytest.mark.parametrize("preset", ["DemoAlignedMAE_ResEncTiny", "DemoAlignedMAE_PrimusTiny"])
def test_short_aligned_mae_run_lowers_the_loss_and_its_encoder_loads_downstream(
    demo_raw_dataset, nnssl_env, preset
) -> None:
    assert plan_and_preprocess(["-d", "1", "-c", "onemmiso", "-np", "1", "-npfp", "1", "--no_progress"]) == 0
    folder = nnssl_env["nnssl_results"] / _train(
        preset, {**CROPS, "train.num_epochs": 4, "train.iterations_per_epoch": 6}
    )
    epochs = _epochs(folder)
    losses = [e["train_loss"] for e in epochs]
    assert len(losses) == 4 and all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.9 * losses[0], losses
    for key in ("train/loss_rec", "train/loss_cva", "train/loss_con", "train/acc", "train/cw_std"):
        assert key in epochs[-1] and torch.isfinite(torch.tensor(epochs[-1][key])), key
    checkpoint = torch.load(folder / "checkpoint_final.pth", weights_only=True)
    assert checkpoint["nnssl_adaptation_plan"]["pretrain_plan"]["configurations"]["onemmiso"]["patch_size"] == [32] * 3
    verify_adaptation_plan(checkpoint["nnssl_adaptation_plan"], checkpoint["network_weights"])
    assert any(k.startswith("teacher.") for k in checkpoint["method_state"])


def test_aligned_mae_starts_from_an_mae_checkpoint_and_reports_what_it_loaded(demo_raw_dataset, nnssl_env) -> None:
    assert plan_and_preprocess(["-d", "1", "-c", "onemmiso", "-np", "1", "-npfp", "1", "--no_progress"]) == 0
    results = nnssl_env["nnssl_results"]
    mae_folder = results / _train(
        "DemoMAE_ResEncTiny",
        {
            "train.patch_size": "16,16,16",
            "method.block_size": 8,
            "train.num_epochs": 1,
            "train.iterations_per_epoch": 2,
        },
    )
    mae_checkpoint = mae_folder / "checkpoint_final.pth"
    n_backbone = len(torch.load(mae_checkpoint, weights_only=True)["network_weights"])
    folder = results / _train(
        "DemoAlignedMAE_ResEncTiny",
        {"train.patch_size": "24,24,24", "method.crop_size": "16,16,16", "method.dense_grid": 4}
        | {"train.num_epochs": 1, "train.iterations_per_epoch": 2, "method.roi_grid": "3,3,3"},
        "-pretrained_weights",
        str(mae_checkpoint),
    )
    log = "".join(p.read_text() for p in folder.glob("training_log_*.txt"))
    assert f"loaded {n_backbone} of {n_backbone} tensors; 0 kept their initialisation" in log
    assert "AlignedMAE start from" in log and "EMA teacher reset to the student" in log
    assert "freshly initialised" in log and "projector" in log
    checkpoint = torch.load(folder / "checkpoint_final.pth", weights_only=True)
    verify_adaptation_plan(checkpoint["nnssl_adaptation_plan"], checkpoint["network_weights"])
