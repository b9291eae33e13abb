"""Helpers for CLI runs on the demo data (the data comes from the ``demo_env`` fixture in conftest.py)."""

from __future__ import annotations

import json
from pathlib import Path

#: A CPU run of a few seconds: tiny ResEnc MAE, 16^3 patches (8^3 mask blocks), 3 steps per epoch, one
#: validation batch, no workers.
QUICK_RUN = [
    "1",
    "onemmiso",
    "-tr",
    "DemoMAE_ResEncTiny",
    "-device",
    "cpu",
    "--set",
    "train.patch_size=16,16,16",
    "--set",
    "method.block_size=8",
    "--set",
    "train.iterations_per_epoch=3",
    "--set",
    "train.val_iterations=1",
    "--set",
    "data.num_workers=0",
]


def run_folder(results: Path, preset: str = "DemoMAE_ResEncTiny") -> Path:
    return results / "Dataset001_Demo" / f"{preset}__nnsslPlans__onemmiso" / "fold_all"


def metrics(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
