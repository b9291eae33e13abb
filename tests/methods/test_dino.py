"""DINO method pieces: head, CLS standardisation, multi-crop views, local-grid positional encodings, mask alignment,
EMA, one step."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from nnssl.architectures import ARCHITECTURES
from nnssl.methods.dino import DINO, DINOConfig, ibot_mask_counts
from nnssl.methods.dino_head import DINOHead, RunningStandardization
from nnssl.methods.teacher import cosine_momentum
from nnssl.transforms.multicrop import MultiCropTransform, crop_size_for_volume_fraction

TINY = dict(num_prototypes=128, head_hidden_dim=64, head_bottleneck_dim=32, global_crop_size=32, local_crop_size=16)


def make(arch: str = "PrimusTiny", **kw) -> DINO:
    torch.manual_seed(0)
    cfg = DINOConfig(**{**TINY, "num_local_crops": 2, "ibot": arch.startswith("Primus"), **kw})
    return DINO(cfg, ARCHITECTURES.get(arch), (48, 48, 48))


def batch_for(method: DINO, b: int = 2) -> dict[str, torch.Tensor]:
    np.random.seed(0)
    transform = method.train_transform()
    samples = [transform({"image": np.random.randn(1, 48, 48, 48).astype(np.float32)}) for _ in range(b)]
    return {k: torch.from_numpy(np.stack([s[k] for s in samples])) for k in samples[0]}


def test_head_normalised_prototypes_and_bounded_logits() -> None:
    head = DINOHead(20, 50, hidden_dim=32, bottleneck_dim=8)
    with torch.no_grad():
        head.last_layer.weight.mul_(7.0)
    z = head.bottleneck(torch.randn(5, 20))
    assert torch.allclose(z.norm(dim=-1), torch.ones(5), atol=1e-5)
    assert torch.allclose(head.last_layer.normalized_weight().norm(dim=1), torch.ones(50), atol=1e-5)
    assert head(torch.randn(5, 20)).abs().max() <= 1.0 + 1e-5
    assert torch.isfinite(head.bottleneck(torch.zeros(2, 20))).all()


def test_multicrop_views_shapes_volume_fractions_and_independence() -> None:
    assert crop_size_for_volume_fraction((40, 40, 40), 0.125) == (20, 20, 20)
    transform = MultiCropTransform(global_size=(16,) * 3, local_size=(8,) * 3, num_local=3)
    np.random.seed(3)
    image = np.random.randn(1, 32, 32, 32).astype(np.float32)
    original = image.copy()
    out = transform({"image": image})
    assert out["global_views"].shape == (2, 1, 16, 16, 16) and out["local_views"].shape == (3, 1, 8, 8, 8)
    assert np.array_equal(image, original)
    assert not np.allclose(out["local_views"][0], out["local_views"][1])
    with pytest.raises(ValueError, match="volume fractions"):
        MultiCropTransform(global_scale=(0.0, 1.2))


def test_ibot_mask_counts() -> None:
    torch.manual_seed(0)
    counts = ibot_mask_counts(200, 50, (0.2, 0.4), 0.5, torch.device("cpu"))
    chosen = counts > 0
    assert 0.35 < chosen.float().mean() < 0.65
    assert counts[chosen].min() >= 10 and counts.max() <= 20


def test_ema_endpoints_and_teacher_starts_as_student() -> None:
    assert cosine_momentum(0, 100, 0.992) == pytest.approx(0.992)
    assert cosine_momentum(99, 100, 0.992) == pytest.approx(1.0)
    method = make()
    for (name, s), (_, t) in zip(method.student.named_parameters(), method.teacher.module.named_parameters()):
        assert torch.equal(s, t), name
    assert not any(p.requires_grad for p in method.teacher.parameters())
    method.train()
    assert not method.teacher.training


@pytest.mark.parametrize("arch", ["PrimusTiny", "ResEncTiny"])
def test_one_step_is_finite_and_logs_the_collapse_monitors(arch: str) -> None:
    method = make(arch)
    method.configure_schedule(steps_per_epoch=4, total_steps=40)
    method.train()
    out = method(batch_for(method))
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert out.metrics["ln_K"] == pytest.approx(math.log(128))
    for key in ("dino_loss", "teacher_entropy", "effective_rank", "koleo"):
        assert math.isfinite(out.metrics[key]), key
    assert ("ibot" in out.metrics) == (arch == "PrimusTiny")
    assert out.metrics["teacher_temp"] == pytest.approx(0.04)
    assert method.network_patch_size() == (32, 32, 32)
    assert int(method.dino_targets.num_updates) == 1  # mean centring by default: the centre moved once
    names = [n for n, p in method.named_parameters() if p.requires_grad and p.grad is None]
    assert all(not n.startswith("teacher") for n in names)


def test_ibot_on_resenc_is_refused_with_a_clear_message() -> None:
    with pytest.raises(ValueError, match="method.ibot=false"):
        make("ResEncTiny", ibot=True)


def test_running_standardization_first_update_exact_then_momentum_and_refusals() -> None:
    torch.manual_seed(0)
    norm = RunningStandardization(3, momentum=0.9)
    x = torch.tensor([[1.0, 10.0, -5.0], [3.0, 10.5, -5.0], [5.0, 11.0, -5.0]])
    assert torch.allclose(norm(x), x)  # identity (up to eps) before any update
    assert norm.update(x)
    assert torch.allclose(norm.mean, torch.tensor([3.0, 10.5, -5.0]))
    assert torch.allclose(norm.var, torch.tensor([4.0, 0.25, 0.0]))  # unbiased variance of the first batch
    y = norm(x)
    assert torch.allclose(y[:, :2], torch.tensor([[-1.0, -1.0], [0.0, 0.0], [1.0, 1.0]]), atol=1e-5)
    assert torch.equal(y[:, 2], torch.zeros(3))  # a constant dimension stays finite (eps), not amplified noise
    # Later updates use momentum 0.9 (cumulative average while n / (n + 1) < 0.9).
    assert norm.update(x + 10.0)
    assert torch.allclose(norm.mean, torch.tensor([8.0, 15.5, 0.0]))  # n = 1: momentum 1/2
    assert not norm.update(torch.tensor([[float("nan"), 0.0, 0.0], [1.0, 1.0, 1.0]]))
    assert not norm.update(torch.ones(1, 3))
    assert int(norm.num_updates) == 2


def test_small_between_sample_spread_reaches_the_head_after_standardisation() -> None:
    """The ResEnc failure mode: GAP vectors that differ by ~4 % between samples give near-identical head outputs."""
    torch.manual_seed(0)
    mean = 0.35 + 0.05 * torch.randn(120)
    pooled = mean + 0.015 * torch.randn(8, 120)  # per-dimension spread measured on the demo data
    head = DINOHead(120, 128, 64, 32)
    norm = RunningStandardization(120)
    norm.update(pooled)

    def mean_offdiag_cosine(z: torch.Tensor) -> float:
        sim = z @ z.t()
        return float((sim.sum() - sim.diagonal().sum()) / (z.shape[0] * (z.shape[0] - 1)))

    with torch.no_grad():
        raw, standardized = head.bottleneck(pooled), head.bottleneck(norm(pooled))
    assert mean_offdiag_cosine(raw) > 0.99
    assert mean_offdiag_cosine(standardized) < 0.5


@pytest.mark.parametrize(
    ("arch", "setting", "expected"),
    [
        ("ResEncTiny", "auto", True),
        ("PrimusTiny", "auto", False),
        ("PrimusTiny", "running", True),
        ("ResEncTiny", "none", False),
    ],
)
def test_cls_standardization_default_per_backbone_and_update_in_training_only(arch, setting, expected) -> None:
    method = make(arch, cls_standardization=setting)
    assert isinstance(method.cls_norm, RunningStandardization) == expected
    if not expected:
        return
    method.configure_schedule(steps_per_epoch=4, total_steps=40)
    method.eval()
    with torch.no_grad():
        method(batch_for(method))
    assert int(method.cls_norm.num_updates) == 0
    method.train()
    method(batch_for(method))
    assert int(method.cls_norm.num_updates) == 1
    assert "cls_norm.mean" in method.state_dict()


def test_unknown_cls_standardization_is_refused() -> None:
    with pytest.raises(ValueError, match="method.cls_standardization"):
        make("ResEncTiny", cls_standardization="batch")
