"""Every registered method on both tiny backbones trains on two processes (gloo): three engine steps, finite losses,
and weights (students, EMA teachers, running statistics) equal across ranks afterwards.

Each rank gets ONE image per step (global batch 2), the hardest case for methods with batch statistics: heads
normalise over the rows of both ranks (``GlobalBatchNorm1d``), Sinkhorn/centring statistics and NT-Xent negatives
come from both ranks. DDP runs without ``find_unused_parameters``; a trainable parameter without gradient would stop
the run on the first step (``check_gradient_coverage``) or DDP on the second.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from nnssl.config import architecture_of
from nnssl.engine import Trainer
from nnssl.engine.distributed import DistContext, destroy_process_group, init_process_group, spawn
from nnssl.methods import METHODS
from nnssl.presets import preset_table, resolve_config

STEPS = 3
TEST_FIXTURE_METHODS = {"Toy"}  # tests/engine/engine_toy.py registers it; it has no Demo presets
#: Methods that pair images inside each process's batch and refuse a per-process batch of one with a message
#: (GVSL registers every image onto another case of the same batch); one image per rank cannot run them.
PAIRS_WITHIN_PROCESS = {"GVSL"}


def cases() -> list[tuple[str, str]]:
    """``(method, Demo preset)`` for every registered method on both tiny backbones."""
    out = []
    for method in METHODS.names():
        if method in TEST_FIXTURE_METHODS | PAIRS_WITHIN_PROCESS:
            continue
        per_arch = {
            arch: sorted(n for n, m, a, _ in preset_table() if m == method and a == arch and n.startswith("Demo"))
            for arch in ("ResEncTiny", "PrimusTiny")
        }
        assert any(per_arch.values()), f"{method} has no Demo preset"
        # a method bound to one family (SparK) has no Demo preset on the other; test_method_contract checks that it
        # refuses that family at configuration validation
        out += [(method, names[0]) for names in per_arch.values() if names]
    return out


def local_batches(method, cfg, rank: int) -> list[list[dict[str, torch.Tensor]]]:
    """STEPS optimizer steps of this rank's micro-batches (one image each), different images on each rank."""
    transform = method.train_transform()
    steps = []
    for step in range(STEPS):
        micro = []
        for k in range(cfg.train.grad_accumulation_steps):
            seed = 1000 * step + 10 * k + rank
            np.random.seed(seed)
            image = np.random.default_rng(seed).normal(size=(1, *cfg.train.patch_size)).astype(np.float32)
            sample = transform({"image": image}) if transform is not None else {"image": image}
            micro.append({key: torch.as_tensor(np.asarray(value))[None] for key, value in sample.items()})
        steps.append(micro)
    return steps


def _worker(ctx: DistContext, out: Path) -> None:
    torch.set_num_threads(1)  # two processes on a small CI machine: no oversubscription
    init_process_group(ctx, "cpu")
    try:
        for _, preset in cases():
            cfg = resolve_config(preset, ["train.batch_size=2"])
            torch.manual_seed(0)  # the same initial weights on both ranks (as the engine's seeding does)
            method = METHODS.get(cfg.method)(cfg.method_cfg, architecture_of(cfg), cfg.train.patch_size)
            folder = out / preset
            trainer = Trainer(method, cfg, lambda e: iter(()), None, folder, {}, "cpu", dist_ctx=ctx)
            losses = [trainer.train_step(batch).loss for batch in local_batches(method, cfg, ctx.rank)]
            state = {k: v.detach().clone() for k, v in method.state_dict().items()}
            torch.save({"losses": losses, "state": state}, out / f"{preset}.rank{ctx.rank}.pt")
    finally:
        destroy_process_group()


@pytest.mark.ddp
def test_every_method_trains_on_two_processes_with_one_image_each(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("MASTER_PORT", raising=False)
    spawn(_worker, 2, (tmp_path,))
    checked = []
    for method_name, preset in cases():
        ranks = [torch.load(tmp_path / f"{preset}.rank{r}.pt", weights_only=True) for r in range(2)]
        assert all(math.isfinite(loss) for loss in ranks[0]["losses"]), (preset, ranks[0]["losses"])
        assert ranks[0]["losses"] == pytest.approx(ranks[1]["losses"], rel=1e-6), preset  # the global loss
        for key, value in ranks[0]["state"].items():
            torch.testing.assert_close(ranks[1]["state"][key], value, rtol=1e-6, atol=1e-7, msg=f"{preset}: {key}")
        checked.append(method_name)
    assert set(checked) == set(METHODS.names()) - TEST_FIXTURE_METHODS - PAIRS_WITHIN_PROCESS


def test_aligned_mae_refuses_a_contrastive_term_on_one_image(tmp_path: Path) -> None:
    cfg = resolve_config("DemoAlignedMAE_ResEncTiny", ["train.batch_size=1"])
    method = METHODS.get(cfg.method)(cfg.method_cfg, architecture_of(cfg), cfg.train.patch_size)
    with pytest.raises(ValueError, match=r"at least 2 images.*method.w_con=0"):
        Trainer(method, cfg, lambda e: iter(()), None, tmp_path, {}, "cpu")
    cfg = resolve_config("DemoAlignedMAE_ResEncTiny", ["train.batch_size=1", "method.w_con=0"])
    method = METHODS.get(cfg.method)(cfg.method_cfg, architecture_of(cfg), cfg.train.patch_size)
    Trainer(method, cfg, lambda e: iter(()), None, tmp_path, {}, "cpu")  # without the term one image is fine
