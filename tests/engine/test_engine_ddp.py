"""DDP on CPU (gloo, 2 processes) equals one process on the same global batch, incl. uneven per-rank batches."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from engine_toy import ADAPTATION_PLAN, make_method, toy_config

from nnssl.engine import Trainer
from nnssl.engine.distributed import DistContext, destroy_process_group, init_process_group, spawn, split_batch

OVERRIDES = (
    "train.batch_size=3",
    "optim.lr=0.5",
    "optim.momentum=0",
    "optim.weight_decay=0",
    "optim.schedule=constant",
    "train.grad_clip=none",
    "method.fixed_mask=true",
)


def global_batches(n: int = 2) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(3)
    return [torch.randn((3, 1, 8, 8, 8), generator=gen) for _ in range(n)]


def run_steps(ctx: DistContext, out: Path, sizes: list[int]) -> None:
    cfg = toy_config(*OVERRIDES)
    start = sum(sizes[: ctx.rank])
    local = [{"image": b[start : start + sizes[ctx.rank]]} for b in global_batches()]
    trainer = Trainer(make_method(cfg), cfg, lambda e: iter(local), None, out, ADAPTATION_PLAN, "cpu", dist_ctx=ctx)
    losses = [trainer.train_step(b).loss for b in local]
    torch.save({"losses": losses, "state": trainer.method.state_dict()}, out / f"rank{ctx.rank}.pt")


def _ddp_worker(ctx: DistContext, out: Path, sizes: list[int]) -> None:
    init_process_group(ctx, "cpu")
    try:
        run_steps(ctx, out, sizes)
    finally:
        destroy_process_group()


def test_split_batch() -> None:
    assert split_batch(8, 3) == [3, 3, 2]
    assert split_batch(2, 2) == [1, 1]
    with pytest.raises(ValueError, match="smaller than the number of processes"):
        split_batch(1, 2)


@pytest.mark.ddp
def test_ddp_matches_single_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MASTER_PORT", raising=False)
    single = tmp_path / "single"
    single.mkdir()
    run_steps(DistContext(), single, [3])
    ddp = tmp_path / "ddp"
    ddp.mkdir()
    sizes = split_batch(3, 2)
    assert sizes == [2, 1]
    spawn(_ddp_worker, 2, (ddp, sizes))
    ref = torch.load(single / "rank0.pt", weights_only=True)
    for rank in range(2):
        got = torch.load(ddp / f"rank{rank}.pt", weights_only=True)
        assert got["losses"] == pytest.approx(ref["losses"], rel=1e-6, abs=1e-9)
        for k, v in ref["state"].items():
            torch.testing.assert_close(got["state"][k], v, rtol=1e-5, atol=1e-7)
    # the update is not trivially zero: weights moved away from the initialisation
    init = make_method(toy_config(*OVERRIDES)).state_dict()
    assert not torch.allclose(init["decoder.weight"], ref["state"]["decoder.weight"])
