"""PCRLv2 demo presets on both tiny backbones: a short CPU run on the shipped demo volumes whose training loss is finite
and falls, with a final checkpoint whose encoder loads into the downstream network built from its adaptation plan
(which records the global view size, 32^3, as the network's patch size).

Shortened to 4 epochs x 8 iterations; the measured numbers are in documentation/pcrlv2.md.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "methods"))
from contrastive_demo import run_demo  # noqa: E402

#: Shortened to fit a CPU test (the presets: 8 epochs x 10 iterations).
SHORT = {"train.num_epochs": 4, "train.iterations_per_epoch": 8, "train.val_iterations": 1}


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["DemoPCRLv2_ResEncTiny", "DemoPCRLv2_PrimusTiny"])
def test_short_pcrlv2_demo_lowers_the_training_loss(demo_raw_dataset, nnssl_env, preset) -> None:
    records, checkpoint = run_demo(nnssl_env, preset, SHORT)
    losses = [r["train_loss"] for r in records]
    assert len(losses) == SHORT["train.num_epochs"] and all(math.isfinite(v) for v in losses), losses
    assert all(r["skipped_steps"] == 0 for r in records), records
    assert (losses[-1] + losses[-2]) / 2 < 0.9 * losses[0], losses
    for key in ("train/rec", "train/mid_rec", "train/global_sim", "train/local_sim"):
        assert all(math.isfinite(r[key]) for r in records), key
    plan = checkpoint["nnssl_adaptation_plan"]["pretrain_plan"]["configurations"]["onemmiso"]
    assert plan["patch_size"] == [32, 32, 32]
