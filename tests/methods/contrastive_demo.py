"""Helper for the SimCLR/VoCo demo runs: preprocess the shipped demo data and train a preset briefly on CPU."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from nnssl.architectures.adaptation_plan import verify_adaptation_plan
from nnssl.cli.plan_and_preprocess import main as plan_and_preprocess
from nnssl.cli.train import main as train


def run_demo(nnssl_env: dict[str, Path], preset: str, overrides: dict[str, object]) -> tuple[list[dict], dict]:
    """Train ``preset`` on the demo dataset; returns (metrics.jsonl records, final checkpoint) after checking
    that the checkpoint's encoder loads into the downstream network built from its adaptation plan alone."""
    assert plan_and_preprocess(["-d", "1", "-c", "onemmiso", "-np", "1", "-npfp", "1", "--no_progress"]) == 0
    args = ["1", "onemmiso", "-tr", preset, "-device", "cpu", "--set", "data.num_workers=0"]
    for key, value in overrides.items():
        args += ["--set", f"{key}={value}"]
    assert train(args) == 0
    folder = nnssl_env["nnssl_results"] / "Dataset001_Demo" / f"{preset}__nnsslPlans__onemmiso" / "fold_all"
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    checkpoint = torch.load(folder / "checkpoint_final.pth", weights_only=True)
    verify_adaptation_plan(checkpoint["nnssl_adaptation_plan"], checkpoint["network_weights"])
    return records, checkpoint
