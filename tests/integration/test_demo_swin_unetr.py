"""SwinUNETR pretext demo presets on both tiny backbones: a short CPU run on the shipped demo volumes lowers the
sum of its rotation, contrastive and in-painting losses, and the final checkpoint's encoder loads strictly into the downstream network.

Measured on 2 shared CPU cores with the presets as registered (seed 12345), train loss per epoch, first -> last:
see documentation/swin_unetr.md.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "methods"))
from contrastive_demo import run_demo  # noqa: E402


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["DemoSwinUNETR_ResEncTiny", "DemoSwinUNETR_PrimusTiny"])
def test_swin_unetr_demo_lowers_its_loss(demo_raw_dataset, nnssl_env, preset) -> None:
    records, checkpoint = run_demo(nnssl_env, preset, {})  # also runs verify_adaptation_plan
    losses = [r["train_loss"] for r in records]
    assert all(math.isfinite(v) for v in losses), losses
    assert all(r["skipped_steps"] == 0 for r in records), records
    assert (losses[-1] + losses[-2]) / 2 < 0.8 * losses[0], losses
    assert checkpoint["nnssl_adaptation_plan"]["pretrain_plan"]["configurations"]["onemmiso"]["patch_size"] == [32] * 3
