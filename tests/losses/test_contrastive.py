"""NT-Xent: closed-form values, the same-image-aware mask, and DDP negatives equal to one process."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nnssl.engine.distributed import DistContext, destroy_process_group, init_process_group, spawn
from nnssl.losses.contrastive import nt_xent


def reference_nt_xent(u: torch.Tensor, v: torch.Tensor, image_ids: torch.Tensor, tau: float) -> torch.Tensor:
    """Loop implementation: row a of [v; u], positive a +- N, negatives = rows of other images."""
    u, v = F.normalize(u, dim=1), F.normalize(v, dim=1)
    rows = torch.cat([v, u])
    ids = torch.cat([image_ids, image_ids])
    n = u.shape[0]
    terms = []
    for a in range(2 * n):
        pos = (a + n) % (2 * n)
        negatives = [b for b in range(2 * n) if ids[b] != ids[a]]
        num = torch.exp(rows[a] @ rows[pos] / tau)
        den = num + sum(torch.exp(rows[a] @ rows[b] / tau) for b in negatives)
        terms.append(-torch.log(num / den))
    return torch.stack(terms).mean()


@pytest.mark.parametrize("n", [2, 4, 6])
def test_orthogonal_embeddings_give_log_of_the_candidate_count(n: int) -> None:
    basis = torch.eye(2 * n + 3)
    u, v = basis[:n], basis[n : 2 * n]
    loss, _ = nt_xent(u, v, temperature=0.5)
    assert float(loss) == pytest.approx(math.log(2 * n - 1), rel=1e-6)
    if n == 2:  # one image, two views: no negative is left, so the (silently 0) loss is refused
        with pytest.raises(ValueError, match="no negative"):
            nt_xent(u, v, temperature=0.5, same_image_aware=True)
        return
    loss_aware, _ = nt_xent(u, v, temperature=0.5, same_image_aware=True)
    assert float(loss_aware) == pytest.approx(math.log(2 * n - 3), rel=1e-6)


@pytest.mark.parametrize("tau", [0.1, 0.5, 1.0])
def test_identical_positives_with_orthogonal_negatives(tau: float) -> None:
    n = 5
    u = torch.eye(n)
    loss, acc = nt_xent(u, u.clone(), temperature=tau)
    expected = -math.log(math.exp(1 / tau) / (math.exp(1 / tau) + 2 * n - 2))
    assert float(loss) == pytest.approx(expected, rel=1e-5, abs=1e-6)
    assert float(acc) == 1.0


def test_matches_loop_reference_and_same_image_rows_are_not_negatives() -> None:
    gen = torch.Generator().manual_seed(0)
    u, v = torch.randn(6, 8, generator=gen), torch.randn(6, 8, generator=gen)
    plain, _ = nt_xent(u, v, 0.3)
    assert float(plain) == pytest.approx(float(reference_nt_xent(u, v, torch.arange(6), 0.3)), rel=1e-5)
    aware, _ = nt_xent(u, v, 0.3, same_image_aware=True)
    assert float(aware) == pytest.approx(float(reference_nt_xent(u, v, torch.arange(6) % 3, 0.3)), rel=1e-5)
    # changing the other view of the same image (rows k +- N/2) leaves the aware loss's row k unaffected:
    # here all rows are affected together, so compare against the reference that excludes them explicitly
    u2 = u.clone()
    u2[3:] = u[:3]  # other views identical to the first views: huge false-negative similarity in the plain form
    aware2, _ = nt_xent(u2, v, 0.3, same_image_aware=True)
    plain2, _ = nt_xent(u2, v, 0.3)
    assert float(aware2) == pytest.approx(float(reference_nt_xent(u2, v, torch.arange(6) % 3, 0.3)), rel=1e-5)
    assert float(plain2) > float(aware2)


def test_odd_rows_rejected_for_the_same_image_aware_form() -> None:
    with pytest.raises(ValueError, match="even number of rows"):
        nt_xent(torch.randn(3, 4), torch.randn(3, 4), same_image_aware=True)


def test_fp16_inputs_are_computed_in_fp32() -> None:
    u = torch.eye(4).half()
    loss, _ = nt_xent(u, u.clone(), temperature=0.05)  # exp(20) overflows fp16
    assert loss.dtype == torch.float32 and torch.isfinite(loss)


# --------------------------------------------------------------------------- DDP
D_IN, D_OUT, TAU = 6, 5, 0.5


def _data(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(7)
    return torch.randn(n, D_IN, generator=gen), torch.randn(n, D_IN, generator=gen)


def _model() -> nn.Module:
    torch.manual_seed(1)
    return nn.Linear(D_IN, D_OUT)


def _step(model: nn.Module, xu, xv, weight: float, aware: bool) -> float:
    loss, _ = nt_xent(model(xu), model(xv), TAU, same_image_aware=aware)
    (loss * weight).backward()
    return float(loss)


def _ddp_worker(ctx: DistContext, out: Path, sizes: list[int], aware: bool) -> None:
    init_process_group(ctx, "cpu")
    try:
        xu, xv = _data(sum(sizes))
        start = sum(sizes[: ctx.rank])
        local = slice(start, start + sizes[ctx.rank])
        model = nn.parallel.DistributedDataParallel(_model())
        # the engine's weight b_r * W / B before DDP's mean over ranks
        weight = sizes[ctx.rank] * ctx.world_size / sum(sizes)
        loss = _step(model, xu[local], xv[local], weight, aware)
        grads = {k: p.grad.clone() for k, p in model.module.named_parameters()}
        torch.save({"loss": loss, "grads": grads}, out / f"rank{ctx.rank}.pt")
    finally:
        destroy_process_group()


@pytest.mark.ddp
@pytest.mark.parametrize("sizes,aware", [([3, 2], False), ([4, 2], True)])
def test_ddp_gathered_negatives_equal_one_process(tmp_path: Path, monkeypatch, sizes, aware) -> None:
    monkeypatch.delenv("MASTER_PORT", raising=False)
    spawn(_ddp_worker, 2, (tmp_path, sizes, aware))
    xu, xv = _data(sum(sizes))
    model = _model()
    if aware:
        # the single-process reference sees each rank's rows with that rank's image structure
        ids, start = [], 0
        for s in sizes:
            ids.append(torch.arange(s) % (s // 2) + start)
            start += s
        loss = reference_nt_xent(model(xu), model(xv), torch.cat(ids), TAU)
    else:
        loss, _ = nt_xent(model(xu), model(xv), TAU)
    loss.backward()
    results = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    # the batch-weighted mean of the rank losses is the global loss
    combined = sum(res["loss"] * s / sum(sizes) for res, s in zip(results, sizes))
    assert combined == pytest.approx(float(loss.detach()), rel=1e-5)
    # every rank ends with exactly the single-process gradient of the gathered batch
    for res in results:
        for name, p in model.named_parameters():
            torch.testing.assert_close(res["grads"][name], p.grad, rtol=1e-5, atol=1e-6)
    # and the negatives really came from the other rank: a local-only loss has a different gradient
    local_model = _model()
    nt_xent(local_model(xu[: sizes[0]]), local_model(xv[: sizes[0]]), TAU, same_image_aware=aware)[0].backward()
    assert not torch.allclose(local_model.weight.grad, model.weight.grad, atol=1e-4)
