"""SwinUNETR pretext: rotations invert and match their labels, cut-outs (z-scored noise, another case's voxels) mark
exactly the voxels they replace, the in-painting term counts only those, and the contrastive term is the shared
NT-Xent on the same embeddings (methods.md 4.7 and 7 item 7)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nnssl.architectures import ARCHITECTURES
from nnssl.architectures.adaptation_plan import build_adaptation_plan, verify_adaptation_plan
from nnssl.losses.contrastive import nt_xent
from nnssl.methods.swin_unetr import (
    RotatedViews,
    SwinUNETRConfig,
    SwinUNETRPretext,
    draw_cutout_boxes,
    inner_cutout,
    masked_l1,
)


def test_rotations_invert_exactly_and_match_their_labels() -> None:
    image = np.random.default_rng(0).normal(size=(1, 12, 10, 10)).astype(np.float32)
    seen = set()
    for seed in range(12):
        np.random.seed(seed)
        out = RotatedViews((1, 2))({"image": image})
        assert out["views"].shape == (2, 1, 12, 10, 10) and out["rotations"].dtype == np.int64
        for view, k in zip(out["views"], out["rotations"]):
            np.testing.assert_array_equal(view, np.rot90(image, int(k), axes=(2, 3)))
            np.testing.assert_array_equal(np.rot90(view, 4 - int(k), axes=(2, 3)), image)
            assert np.array_equal(view, image) == (k == 0)  # every turn but 0 moves the voxels
            seen.add(int(k))
    assert seen == {0, 1, 2, 3}


def test_cutout_boxes_respect_their_size_limits_and_coverage() -> None:
    torch.manual_seed(0)
    for _ in range(20):
        boxes = draw_cutout_boxes((40, 40, 20), 0.3, 0.25, 0.05)
        for box in boxes:
            for s, d in zip(box, (40, 40, 20)):
                assert 1 <= s.stop - s.start <= int(0.25 * d) and s.stop <= d
        volumes = [int(np.prod([s.stop - s.start for s in b])) for b in boxes]
        assert sum(volumes[:-1]) < 0.3 * 40 * 40 * 20  # stops at the first box that reaches the target


def test_cutout_marks_exactly_the_replaced_voxels_with_z_scored_noise_and_other_cases() -> None:
    torch.manual_seed(3)
    views = torch.randn(6, 1, 24, 24, 24) + 5.0  # three images x two views, far from the noise's mean 0
    original = views.clone()
    corrupted, cut, partners = inner_cutout(views, SwinUNETRConfig())
    torch.testing.assert_close(views, original, rtol=0, atol=0)  # the clean views are not modified
    assert torch.equal(corrupted != views, cut.expand_as(views))
    assert all(i // 3 == j // 3 for i, j in enumerate(partners))  # partners come from the same set of views
    copied_any = False
    for i, j in enumerate(partners):
        inside = cut[i, 0]
        from_partner = inside & (corrupted[i, 0] == views[j, 0])
        if j != i:
            copied_any |= bool(from_partner.any())
        noise = corrupted[i, 0][inside & ~from_partner]
        if noise.numel() > 500:  # N(0, 1) in the z-scored domain, not [0, 1]
            assert abs(float(noise.mean())) < 0.2 and 0.8 < float(noise.std()) < 1.2 and float(noise.min()) < 0
    assert copied_any


def test_cutout_without_cross_sample_uses_noise_only() -> None:
    torch.manual_seed(4)
    views = torch.randn(4, 1, 16, 16, 16)
    _, _, partners = inner_cutout(views, SwinUNETRConfig(cross_sample=False))
    assert partners == [0, 1, 2, 3]


def test_in_painting_loss_counts_only_the_cut_out_voxels() -> None:
    """Perturbation: changing the prediction outside C leaves the loss; inside, it moves by |delta| / |C|."""
    torch.manual_seed(5)
    prediction, target = torch.randn(2, 1, 8, 8, 8), torch.randn(2, 1, 8, 8, 8)
    cut = torch.zeros(2, 1, 8, 8, 8, dtype=torch.bool)
    cut[0, :, :3] = True
    cut[1, :, 4:, 2:] = True
    base = masked_l1(prediction, target, cut)
    torch.testing.assert_close(base, (prediction - target).abs()[cut].mean())
    outside = prediction.clone()
    outside[~cut] += 100.0
    assert float(masked_l1(outside, target, cut)) == float(base)
    inside = prediction.clone()
    voxel = (0, 0, 1, 5, 5)
    inside[voxel] = target[voxel] + 50.0
    change = float(masked_l1(inside, target, cut) - base)
    expected = (50.0 - abs(float(prediction[voxel] - target[voxel]))) / int(cut.sum())
    assert change == pytest.approx(expected, rel=1e-4)


def _method(arch: str = "ResEncTiny", **cfg) -> SwinUNETRPretext:
    torch.manual_seed(0)
    return SwinUNETRPretext(SwinUNETRConfig(contrast_dim=32, **cfg), ARCHITECTURES.get(arch), (16, 16, 16))


@pytest.mark.parametrize("region", ["cutout", "all"])
def test_forward_is_the_sum_of_rotation_ce_shared_nt_xent_and_in_painting_l1(region: str) -> None:
    method = _method(reconstruction_region=region).eval()
    np.random.seed(0)
    samples = [
        RotatedViews((1, 2))({"image": np.random.normal(size=(1, 16, 16, 16)).astype(np.float32)}) for _ in range(2)
    ]
    batch = {k: torch.as_tensor(np.stack([s[k] for s in samples])) for k in samples[0]}
    with torch.no_grad():
        torch.manual_seed(7)
        out = method(batch)
        clean = torch.cat([batch["views"][:, 0], batch["views"][:, 1]])
        torch.manual_seed(7)
        corrupted, cut, _ = inner_cutout(clean, method.cfg)
        rec = method.net.reconstruct(corrupted)
        pooled = method.head_norm(rec.features.pooled())
        # standardised over the batch's views: the common component of the pooled features is gone
        torch.testing.assert_close(pooled.mean(0), torch.zeros(pooled.shape[1]), atol=1e-5, rtol=0)
        labels = torch.cat([batch["rotations"][:, 0], batch["rotations"][:, 1]])
        rot = torch.nn.functional.cross_entropy(method.rotation_head(pooled), labels)
        z = method.contrast_head(pooled)
        con, _ = nt_xent(z[:2], z[2:], 0.5)  # the shared loss on the same embeddings, view 1 vs view 2
        rec_loss = masked_l1(rec.prediction, clean, cut if region == "cutout" else torch.ones_like(cut))
    assert out.metrics["loss_con"] == pytest.approx(float(con), rel=1e-6)
    assert out.metrics["loss_rot"] == pytest.approx(float(rot), rel=1e-6)
    assert out.metrics["loss_rec"] == pytest.approx(float(rec_loss), rel=1e-6)
    assert float(out.loss) == pytest.approx(float(rot + con + rec_loss), rel=1e-6)


def test_unequal_sides_in_the_rotation_plane_are_refused() -> None:
    with pytest.raises(ValueError, match="rotation_plane"):
        SwinUNETRPretext(SwinUNETRConfig(), ARCHITECTURES.get("ResEncTiny"), (16, 16, 32))


@pytest.mark.parametrize("arch", ["ResEncTiny", "PrimusTiny"])
def test_backbone_loads_strictly_into_a_fresh_downstream_network(arch: str) -> None:
    method = _method(arch)
    spec = ARCHITECTURES.get(arch)
    state = method.backbone().state_dict()
    spec.build(1, 1, (16, 16, 16)).load_state_dict(state, strict=True)
    plans = {"configurations": {"c": {"spacing": [1.0] * 3, "patch_size": [16] * 3}}}
    verify_adaptation_plan(build_adaptation_plan(spec, plans, "c", (16, 16, 16), 1), state)
