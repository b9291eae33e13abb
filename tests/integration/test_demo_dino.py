"""Every DINO preset's tiny CPU variant on the shipped demo volumes: finite, no collapse signature, loadable encoder."""

from __future__ import annotations

import json
import math

import pytest
import torch

from nnssl.architectures.adaptation_plan import verify_adaptation_plan
from nnssl.cli.plan_and_preprocess import main as plan_and_preprocess
from nnssl.cli.train import main as train


@pytest.mark.parametrize(
    "preset",
    [
        "DemoDINO_PrimusTiny",
        pytest.param("DemoDINO_ResEncTiny", marks=pytest.mark.slow),
    ],
)
def test_short_dino_run_on_demo_data_does_not_collapse(demo_raw_dataset, nnssl_env, preset) -> None:
    assert plan_and_preprocess(["-d", "1", "-c", "onemmiso", "-np", "1", "-npfp", "1", "--no_progress"]) == 0
    overrides = {
        "train.num_epochs": 4,
        "train.iterations_per_epoch": 4,
        "train.val_iterations": 1,
        "data.num_workers": 0,
        "method.teacher_temp_warmup_epochs": 2,
    }
    args = ["1", "onemmiso", "-tr", preset, "-device", "cpu"]
    for key, value in overrides.items():
        args += ["--set", f"{key}={value}"]
    assert train(args) == 0

    folder = nnssl_env["nnssl_results"] / "Dataset001_Demo" / f"{preset}__nnsslPlans__onemmiso" / "fold_all"
    epochs = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert len(epochs) == 4
    last = epochs[-1]
    for record in epochs:
        assert math.isfinite(record["train_loss"]) and record["skipped_steps"] == 0
        assert record["train/ln_K"] == pytest.approx(math.log(1024))
    # No uniform collapse (flat targets: entropy ~1, loss stuck at ln K) and no one-hot collapse (entropy ~0).
    # The loss itself stays near ln K in so short a run, so the targets' entropy is the criterion.
    assert 0.05 < last["train/teacher_entropy"] < 0.98, last
    assert last["train/effective_rank"] > 1.0, last
    if preset == "DemoDINO_ResEncTiny":
        # Before the CLS standardisation (documentation/dino.md) the entropy rose 0.73 -> 0.996 in these 16 steps.
        assert last["train/teacher_entropy"] < 0.95, last
        assert max(r["train/teacher_entropy"] for r in epochs) < 0.95, epochs
    assert math.isfinite(last["train/koleo"])
    if preset == "DemoDINO_PrimusTiny":
        assert math.isfinite(last["train/ibot"])
    else:
        assert "train/ibot" not in last

    checkpoint = torch.load(folder / "checkpoint_final.pth", weights_only=True)
    verify_adaptation_plan(checkpoint["nnssl_adaptation_plan"], checkpoint["network_weights"])
    assert checkpoint["nnssl_adaptation_plan"]["architecture_plans"]["arch_kwargs"] is not None


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["DemoDINO_PrimusTiny", "DemoDINO_ResEncTiny"])
def test_full_demo_run_keeps_the_dino_loss_clearly_below_ln_k(demo_raw_dataset, nnssl_env, preset) -> None:
    """The whole demo preset (12 x 10 steps): the DINO loss leaves ln K and stays clearly below it to the end.

    Measured (documentation/dino.md): PrimusTiny 6.02 -> 3.17, ResEncTiny 6.54 -> 4.70 (ln K = 6.93); before the
    fix (zero-started centre, raw CLS, teacher temperature 0.07) the loss dipped and came back to 6.7.
    """
    assert plan_and_preprocess(["-d", "1", "-c", "onemmiso", "-np", "1", "-npfp", "1", "--no_progress"]) == 0
    assert train(["1", "onemmiso", "-tr", preset, "-device", "cpu", "--set", "data.num_workers=0"]) == 0
    folder = nnssl_env["nnssl_results"] / "Dataset001_Demo" / f"{preset}__nnsslPlans__onemmiso" / "fold_all"
    epochs = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    ln_k = math.log(1024)
    late = [r["train/dino_loss"] for r in epochs[-4:]]
    assert max(late) < 0.9 * ln_k, [r["train/dino_loss"] for r in epochs]
    assert max(r["train/teacher_entropy"] for r in epochs[-4:]) < 0.8, epochs[-4:]
