"""SimCLR and VoCo demo presets on both tiny backbones: a short CPU run on the shipped demo volumes whose training
loss is finite and falls, with a final checkpoint whose encoder loads into the downstream network.

DINO (no collapse signature) and AlignedMAE (falling loss) have the same end-to-end check for both backbones in
test_demo_dino.py and test_demo_aligned_mae.py. Measured on 2 CPU cores with the settings below, ratio = mean train
loss of the last two epochs / train loss of the first epoch (seed 12345 = the presets' seed; other seeds in brackets):

| preset                | epochs | loss ratio, seed 12345 (1, 2) | train/pos first -> last two, seed 12345 (1) |
|-----------------------|--------|-------------------------------|---------------------------------------------|
| DemoSimCLR_ResEncTiny | 6      | 0.922 (0.947)                 |                                             |
| DemoSimCLR_PrimusTiny | 10     | 0.885 (0.906, 0.912)          |                                             |
| DemoVoCo_ResEncTiny   | 6      | 0.833 (0.920)                 | 0.488 -> 0.350, -28% (-22%)                 |
| DemoVoCo_PrimusTiny   | 6      | 0.906 (0.875, 0.930)          | 0.429 -> 0.378, -12% (-22%, -28%)           |

DemoVoCo_PrimusTiny was re-measured after whole-volume z-scoring became the preprocessing default (the other rows
predate it and still pass their thresholds at the presets' seed): its L_pos falls by 12-28% over 6 epochs for
seeds 12345, 1, 2 (10 epochs: 15-22%), less than on ResEnc, so its bound is 0.9 instead of 0.85. Before the
change: total 0.911 (0.977), L_pos 0.444 -> 0.330 (-26%, -18%); 10 epochs 1.03, 0.997, 0.978.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "methods"))
from contrastive_demo import run_demo  # noqa: E402

# SimCLR: 16^3 crop pairs from 32^3 patches, batch 8 (15 candidates per view); 5-15 s per preset.
SIMCLR = {
    "method.crop_size": "16,16,16",
    "train.patch_size": "32,32,32",
    "train.batch_size": 8,
    "train.num_epochs": 6,
    "train.iterations_per_epoch": 10,
    "train.val_iterations": 1,
}
# VoCo: the presets' 4x4x1 grid of 16^3 bases from 64x64x16 patches, batch 4; 7-30 s per preset.
VOCO = {"train.batch_size": 4, "train.num_epochs": 6, "train.iterations_per_epoch": 10, "train.val_iterations": 1}
#: Bound on (mean L_pos of the last two epochs) / (L_pos of the first epoch), from the measurements above.
VOCO_POS_RATIO = {"DemoVoCo_ResEncTiny": 0.85, "DemoVoCo_PrimusTiny": 0.9}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("preset", "overrides"),
    [
        ("DemoSimCLR_ResEncTiny", SIMCLR),
        ("DemoSimCLR_PrimusTiny", {**SIMCLR, "train.num_epochs": 10}),
        ("DemoVoCo_ResEncTiny", VOCO),
        ("DemoVoCo_PrimusTiny", VOCO),
    ],
)
def test_short_demo_run_lowers_the_training_loss(demo_raw_dataset, nnssl_env, preset, overrides) -> None:
    records, checkpoint = run_demo(nnssl_env, preset, overrides)  # also runs verify_adaptation_plan
    losses = [r["train_loss"] for r in records]
    assert len(losses) == overrides["train.num_epochs"] and all(math.isfinite(v) for v in losses), losses
    assert all(r["skipped_steps"] == 0 for r in records), records
    assert (losses[-1] + losses[-2]) / 2 < 0.97 * losses[0], losses
    if preset.startswith("DemoVoCo"):
        # The total falls only a little: L_neg and L_reg rise from ~0 while the prediction term L_pos falls
        # (documentation/contrastive.md, VoCo).
        pos = [r["train/pos"] for r in records]
        assert all(math.isfinite(v) for v in pos), pos
        assert (pos[-1] + pos[-2]) / 2 < VOCO_POS_RATIO[preset] * pos[0], pos
    assert checkpoint["nnssl_adaptation_plan"]["architecture_plans"]["arch_kwargs"] is not None


#: Lower bound on the rise of each validation metric of the VoCo demos: mean of the last two epochs minus the
#: first epoch. Measured rises with the presets (2 CPU cores, one thread per run; seeds 12345 / 1 / 2):
#: DemoVoCo_PrimusTiny hit@1 +0.18 / +0.10 / +0.12, correlation +0.16 / +0.10 / +0.11;
#: DemoVoCo_ResEncTiny hit@1 +0.14 / +0.10, correlation +0.12 / +0.07. With the VoCo code's teacher momentum
#: 0.9 instead they stayed flat or fell (documentation/contrastive.md, VoCo).
VOCO_METRIC_RISE = 0.05


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["DemoVoCo_ResEncTiny", "DemoVoCo_PrimusTiny"])
def test_voco_demo_learns_where_its_targets_lie(demo_raw_dataset, nnssl_env, preset) -> None:
    """The position signals, not the loss (a constant similarity already reaches a low loss): on the fixed
    validation targets the hit rate of the most-overlapped base and the similarity/overlap correlation rise."""
    records, _ = run_demo(nnssl_env, preset, {})
    for key in ("val/hit_at_1", "val/overlap_correlation"):
        values = [r[key] for r in records]
        assert all(math.isfinite(v) for v in values), (key, values)
        assert (values[-1] + values[-2]) / 2 > values[0] + VOCO_METRIC_RISE, (key, values)
