"""Models Genesis demo presets on both tiny backbones: a short CPU run on the shipped demo volumes lowers the
restoration loss, and the final checkpoint's encoder loads strictly into the downstream network.

Measured with the presets as registered (seed 12345, 2 heavily shared CPU cores), train loss first epoch -> last,
(mean of the last two) / first, validation loss first -> last:

| preset                       | train loss     | ratio | val loss       |
|------------------------------|----------------|-------|----------------|
| DemoModelsGenesis_ResEncTiny | 1.527 -> 0.952 | 0.66  | 1.259 -> 0.923 |
| DemoModelsGenesis_PrimusTiny | 1.895 -> 1.103 | 0.62  | 1.720 -> 1.170 |

See documentation/models_genesis.md.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "methods"))
from contrastive_demo import run_demo  # noqa: E402


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["DemoModelsGenesis_ResEncTiny", "DemoModelsGenesis_PrimusTiny"])
def test_models_genesis_demo_lowers_the_restoration_loss(demo_raw_dataset, nnssl_env, preset) -> None:
    records, checkpoint = run_demo(nnssl_env, preset, {})  # also runs verify_adaptation_plan
    losses = [r["train_loss"] for r in records]
    assert all(math.isfinite(v) for v in losses), losses
    assert all(r["skipped_steps"] == 0 for r in records), records
    assert (losses[-1] + losses[-2]) / 2 < 0.8 * losses[0], losses
    assert records[-1]["val_loss"] < 0.85 * records[0]["val_loss"], [r["val_loss"] for r in records]
    assert checkpoint["nnssl_adaptation_plan"]["pretrain_plan"]["configurations"]["onemmiso"]["patch_size"] == [32] * 3
