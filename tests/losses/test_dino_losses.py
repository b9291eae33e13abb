"""DINO / iBOT / KoLeo losses and the collapse monitors against closed forms (methods.md 2.6 items 1-6)."""

from __future__ import annotations

import math

import pytest
import torch

from nnssl.losses.dino import (
    CenteredTargets,
    dino_cross_view_loss,
    effective_rank,
    ibot_masked_loss,
    koleo_loss,
    sinkhorn_knopp,
    teacher_entropy_ratio,
)

K = 64


def test_uniform_logits_give_exactly_ln_k_for_dino_and_ibot() -> None:
    targets = CenteredTargets(K, "mean", 0.9)
    b, n_local = 3, 4
    teacher = [targets.targets(torch.zeros(b, K), 0.04) for _ in range(2)]
    student = [torch.zeros(b, K) for _ in range(2 + n_local)]
    loss, _ = dino_cross_view_loss(student, teacher, 0.1)
    assert float(loss) == pytest.approx(math.log(K), abs=1e-6)
    mask = torch.zeros(2, 5, dtype=torch.bool)
    mask[0, :3] = True
    mask[1, 4] = True
    m = int(mask.sum())
    ibot = ibot_masked_loss(torch.zeros(m, K), targets.targets(torch.zeros(m, K), 0.04), mask, 0.1)
    assert float(ibot) == pytest.approx(math.log(K), abs=1e-6)
    assert teacher_entropy_ratio(teacher[0]) == pytest.approx(1.0)


def test_same_view_exclusion_counts_2_times_views_minus_2_terms() -> None:
    for n_local in (0, 1, 6):
        student = [torch.randn(2, K) for _ in range(2 + n_local)]
        teacher = [torch.softmax(torch.randn(2, K), -1) for _ in range(2)]
        loss, terms = dino_cross_view_loss(student, teacher, 0.1)
        assert terms == 2 * (2 + n_local) - 2
        manual = []
        for i in range(2):
            for j in range(2 + n_local):
                if i != j:
                    manual.append(-(teacher[i] * torch.log_softmax(student[j] / 0.1, -1)).sum(-1).mean())
        assert float(loss) == pytest.approx(float(torch.stack(manual).mean()), rel=1e-6)


def test_centre_starts_at_the_first_batch_mean_then_moves_with_momentum_and_refuses_non_finite_batches() -> None:
    targets = CenteredTargets(K, "mean", 0.9)
    logits = torch.randn(5, K)
    assert targets.update(logits)
    assert torch.allclose(targets.center, logits.mean(0, keepdim=True), atol=1e-7)  # not 0.1 x mean: no zero start
    second = torch.randn(3, K)
    assert targets.update(second)
    expected = 0.9 * logits.mean(0, keepdim=True) + 0.1 * second.mean(0, keepdim=True)
    assert torch.allclose(targets.center, expected, atol=1e-6)
    before = targets.center.clone()
    bad = logits.clone()
    bad[2, 7] = float("nan")
    assert not targets.update(bad)
    bad[2, 7] = float("inf")
    assert not targets.update(bad)
    assert torch.equal(targets.center, before) and torch.isfinite(targets.center).all()
    assert int(targets.skipped_updates) == 2
    assert torch.isfinite(targets.targets(torch.randn(2, K), 0.04)).all()


def test_sinkhorn_rows_are_distributions_and_prototypes_approach_equipartition() -> None:
    torch.manual_seed(0)
    b = 16
    logits = torch.randn(b, K) * 0.3
    q = sinkhorn_knopp(logits, 0.05, iterations=3)
    assert torch.allclose(q.sum(dim=1), torch.ones(b), atol=1e-5)
    deviation = [float((sinkhorn_knopp(logits, 0.05, iterations=n).sum(dim=0) - b / K).abs().max()) for n in (1, 3, 10)]
    assert deviation[0] > deviation[1] > deviation[2]
    const = sinkhorn_knopp(torch.zeros(b, K), 0.05)
    assert torch.allclose(const.sum(dim=0), torch.full((K,), b / K), atol=1e-6)
    assert torch.allclose(const, torch.full((b, K), 1 / K), atol=1e-7)


def test_sinkhorn_on_few_rows_caps_every_target_and_a_queue_lifts_the_cap() -> None:
    """B rows against K prototypes: Sinkhorn gives each prototype mass B/K, so no target exceeds B/K (entropy
    >= ln(K/B)) however confident the teacher is; with a queue of Q earlier rows the cap is (B + Q)/K."""
    k, b = 64, 4
    confident = torch.full((b, k), -1.0)  # cosine logits, as the DINO head gives
    confident[torch.arange(b), torch.arange(b)] = 1.0  # row b points at prototype b
    plain = CenteredTargets(k, "sinkhorn", sk_iterations=50)
    capped = plain.targets(confident, 0.05)
    assert float(capped.max()) <= b / k + 1e-4
    assert teacher_entropy_ratio(capped) >= math.log(k / b) / math.log(k) - 1e-3
    queued = CenteredTargets(k, "sinkhorn", sk_iterations=50, queue_size=k)
    history = torch.full((k, k), -1.0)
    history[torch.arange(k), torch.arange(k)] = 1.0  # earlier rows used every prototype once
    assert queued.update(history) and int(queued.queue_filled) == k
    sharp = queued.targets(confident, 0.05)
    assert sharp.shape == (b, k) and torch.allclose(sharp.sum(1), torch.ones(b), atol=1e-4)
    assert float(sharp.diagonal().min()) > 0.4  # far above the cap b/k = 0.0625
    # FIFO: pushing more rows than the queue holds keeps the newest, non-finite rows are dropped
    queued.update(torch.cat([torch.full((1, k), float("nan")), torch.zeros(3, k)]))
    assert int(queued.queue_filled) == k and int(queued.queue_next) == 3
    assert not CenteredTargets(k, "sinkhorn").update(history)  # no queue: nothing to keep


def test_ibot_counts_only_masked_tokens_with_per_image_weighting() -> None:
    torch.manual_seed(1)
    n = 120
    mask = torch.zeros(2, n, dtype=torch.bool)
    mask[0, 5] = True  # one masked token
    mask[1, :100] = True  # a hundred
    m = int(mask.sum())
    teacher = torch.softmax(torch.randn(m, K), -1)
    student = torch.randn(m, K)
    loss = ibot_masked_loss(student, teacher, mask, 0.1)
    h = -(teacher * torch.log_softmax(student / 0.1, -1)).sum(-1)
    assert float(loss) == pytest.approx(float((h[0] + h[1:].mean()) / 2), rel=1e-6)
    # Unmasked positions never enter: the interface only takes masked rows, and changing the mask of image 1 to
    # fewer tokens re-weights only within image 1.
    mask2 = mask.clone()
    mask2[1, 50:100] = False
    keep = torch.cat([torch.tensor([True]), torch.arange(100) < 50])
    loss2 = ibot_masked_loss(student[keep], teacher[keep], mask2, 0.1)
    assert float(loss2) == pytest.approx(float((h[0] + h[1:51].mean()) / 2), rel=1e-6)
    empty = ibot_masked_loss(torch.zeros(0, K), torch.zeros(0, K), torch.zeros(2, n, dtype=torch.bool), 0.1)
    assert float(empty) == 0.0


@pytest.mark.parametrize("n", [3, 6, 17])
def test_koleo_on_a_circle(n: int) -> None:
    angles = 2 * math.pi * torch.arange(n) / n
    points = torch.zeros(n, 8)
    points[:, 2], points[:, 5] = torch.cos(angles), torch.sin(angles)
    assert float(koleo_loss(points * 3.0)) == pytest.approx(-math.log(2 * math.sin(math.pi / n)), abs=1e-5)


def test_koleo_with_duplicates_is_finite_and_skipped_for_one_sample() -> None:
    x = torch.randn(4, 16, requires_grad=True)
    dup = torch.cat([x, x[:1]])
    loss = koleo_loss(dup)
    assert torch.isfinite(loss)
    assert float(loss) > -math.log(1e-8) / 5 - 5  # dominated by -log(eps) for the duplicated pair
    loss.backward()
    assert torch.isfinite(x.grad).all()
    assert koleo_loss(torch.randn(1, 16)) is None


def test_effective_rank_and_entropy_monitors() -> None:
    torch.manual_seed(2)
    assert effective_rank(torch.ones(8, 4) * 3) == 0.0
    iso = effective_rank(torch.randn(512, 4))
    assert 3.8 < iso <= 4.0
    line = effective_rank(torch.randn(64, 1) * torch.tensor([[1.0, 2.0, 3.0]]))
    assert line == pytest.approx(1.0, abs=1e-4)
    one_hot = torch.nn.functional.one_hot(torch.arange(4), K).float()
    assert teacher_entropy_ratio(one_hot) == pytest.approx(0.0, abs=1e-6)
