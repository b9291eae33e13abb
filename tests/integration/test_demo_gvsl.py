"""GVSL demo presets on both tiny backbones: a short CPU run on the shipped demo volumes whose training loss is finite
and falls, with a final checkpoint whose encoder loads into the downstream network built from its adaptation plan.

Shortened to fit a CPU test: 24^3 patches, 4 epochs x 8 iterations (the presets: 32^3, 8 x 10); the loss falls
within the first epochs (documentation/gvsl.md has the measured numbers).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "methods"))
from contrastive_demo import run_demo  # noqa: E402

SHORT = {
    "train.patch_size": "24,24,24",
    "train.num_epochs": 4,
    "train.iterations_per_epoch": 8,
    "train.val_iterations": 1,
}


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["DemoGVSL_ResEncTiny", "DemoGVSL_PrimusTiny"])
def test_short_gvsl_demo_lowers_the_training_loss(demo_raw_dataset, nnssl_env, preset) -> None:
    records, checkpoint = run_demo(nnssl_env, preset, SHORT)
    losses = [r["train_loss"] for r in records]
    assert len(losses) == SHORT["train.num_epochs"] and all(math.isfinite(v) for v in losses), losses
    assert all(r["skipped_steps"] == 0 for r in records), records
    assert (losses[-1] + losses[-2]) / 2 < 0.9 * losses[0], losses
    for key in ("train/mse", "train/ncc", "train/smooth"):
        assert all(math.isfinite(r[key]) for r in records), key
    assert checkpoint["nnssl_adaptation_plan"]["architecture_plans"]["arch_kwargs"] is not None
