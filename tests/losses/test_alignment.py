"""CVA losses and views: ROI-alignment geometry on a coordinate volume, loss values, the overlap sampler.

The NT-Xent value tests (orthogonal embeddings give log(2n-3) for the same-image-aware form, log(2n-1) for
the plain one; methods.md 1.8 test 1) live with the helper in ``tests/losses/test_contrastive.py``.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from nnssl.losses.alignment import (
    channel_std_ratio,
    cva_contrastive_loss,
    cva_cosine_loss,
    cva_gram_loss,
    masked_huber,
    roi_align,
)
from nnssl.transforms.intensity import IntensityAugmentation
from nnssl.transforms.overlap_views import OverlapViews, fits, min_base_size, sample_overlap_fractions
from nnssl.transforms.views import crop, overlap_lengths, overlapping_pair


def coordinate_volume(shape) -> np.ndarray:
    """(3, X, Y, Z): channel a holds each voxel's index along array axis a."""
    return np.stack(np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij"))


def _aligned_pair(fractions, p=64, grid=7, swap_axes=False):
    f = tuple(fractions)
    lengths = overlap_lengths((p,) * 3, f)
    base = tuple(2 * p - o + 3 for o in lengths)
    volume = coordinate_volume(base)
    start1, start2, box1, box2 = overlapping_pair(base, (p,) * 3, f, np.random.default_rng(3))
    crops = torch.from_numpy(np.stack([crop(volume, start1, (p,) * 3), crop(volume, start2, (p,) * 3)]))
    boxes = torch.tensor([box1, box2], dtype=torch.float32)
    if swap_axes:  # the reference's ordering: first array axis written into grid_sample's W component
        boxes = boxes[:, [2, 1, 0, 5, 4, 3]]
    aligned = roi_align(crops, boxes, grid=grid, oversample=2)
    return aligned, start2, lengths


def test_roi_align_of_both_views_covers_the_same_voxels_and_exactly_the_overlap() -> None:
    aligned, start2, lengths = _aligned_pair((0.9, 0.6, 0.45))
    assert aligned.shape == (2, 3, 7, 7, 7)
    assert float((aligned[0] - aligned[1]).abs().max()) <= 1e-3  # <= 1 voxel required; exact here
    cells = torch.arange(7, dtype=torch.float32) + 0.5
    for axis in range(3):
        o, s = lengths[axis], start2[axis]
        # channel `axis` varies along array axis `axis` only; cell g's centre is s + (g + 0.5) o / 7 (edge units)
        expected = s + cells * o / 7 - 0.5
        profile = aligned[0, axis].movedim(axis, 0).reshape(7, -1)
        assert torch.allclose(profile, expected[:, None].expand(7, 49), atol=1e-3), axis
        # the 7 cells tile [s, s + o] exactly: first lower edge and last upper edge
        half = 0.5 * o / 7
        assert float(profile[0, 0]) + 0.5 - half == pytest.approx(s, abs=1e-3)
        assert float(profile[-1, 0]) + 0.5 + half == pytest.approx(s + o, abs=1e-3)


def test_reference_axis_order_misaligns_the_views_by_many_voxels() -> None:
    aligned, _, _ = _aligned_pair((0.9, 0.6, 0.45), swap_axes=True)
    assert float((aligned[0] - aligned[1]).abs().max()) > 10.0


def test_roi_align_anisotropic_grid_keeps_axis_order() -> None:
    x = torch.from_numpy(coordinate_volume((16, 12, 8)))[None]
    out = roi_align(x, torch.tensor([[0.0, 0.0, 0.0, 1.0, 1.0, 1.0]]), grid=(4, 3, 2), oversample=2)
    assert out.shape == (1, 3, 4, 3, 2)
    assert torch.allclose(out[0, 0, :, 0, 0], torch.tensor([1.5, 5.5, 9.5, 13.5]))
    assert torch.allclose(out[0, 2, 0, 0, :], torch.tensor([1.5, 5.5]))


def test_cosine_cva_values() -> None:
    p = torch.randn(4, 16, 3, 3, 3)
    assert float(cva_cosine_loss(p, p.clone() * 3.0)) == pytest.approx(0.0, abs=1e-6)
    assert float(cva_cosine_loss(p, -p)) == pytest.approx(4.0, abs=1e-5)
    student = p.clone().requires_grad_()
    teacher = torch.randn_like(p).requires_grad_()
    cva_cosine_loss(student, teacher).backward()
    assert student.grad is not None and teacher.grad is None  # the teacher side is a stop-gradient


def test_gram_loss_is_zero_for_rotated_channels_and_positive_otherwise() -> None:
    p = torch.randn(2, 8, 2, 2, 2)
    rotation, _ = torch.linalg.qr(torch.randn(8, 8))
    rotated = torch.einsum("dc,bcxyz->bdxyz", rotation, p)
    assert float(cva_gram_loss(p, rotated)) == pytest.approx(0.0, abs=1e-6)
    assert float(cva_gram_loss(p, torch.randn_like(p))) > 1e-3


def test_contrastive_cva_uses_cells_as_positives_and_drops_the_same_cell_of_the_other_view() -> None:
    # B = 1 image, 2 views, 2 cells -> M = 4 (view, cell) rows; orthogonal embeddings: every logit 0
    eye = torch.eye(8)
    student = eye[:4].reshape(2, 2, 8).permute(0, 2, 1).reshape(2, 8, 2, 1, 1)
    teacher = eye[4:].reshape(2, 2, 8).permute(0, 2, 1).reshape(2, 8, 2, 1, 1)
    assert float(cva_contrastive_loss(student, teacher, gather=False)) == pytest.approx(math.log(2 * 4 - 3), rel=1e-6)
    assert float(cva_contrastive_loss(student, student, gather=False)) < math.log(5)
    with pytest.raises(ValueError, match="even"):
        cva_contrastive_loss(student[:1].expand(3, -1, -1, -1, -1), teacher[:1].expand(3, -1, -1, -1, -1))


def test_masked_huber_scores_masked_voxels_only() -> None:
    target = torch.randn(2, 1, 8, 8, 8)
    mask = (torch.rand(2, 1, 8, 8, 8) < 0.5).float()
    prediction = torch.randn(2, 1, 8, 8, 8)
    base = float(masked_huber(prediction, target, mask))
    assert float(masked_huber(prediction + 7.0 * (1 - mask), target, mask)) == pytest.approx(base, rel=1e-6)
    assert float(masked_huber(target, target, mask)) == 0.0
    # Huber delta 1: 0.5 d^2 for |d| <= 1, |d| - 0.5 beyond
    d = torch.zeros(1, 1, 2, 1, 1)
    d[0, 0, 0] = 0.5
    d[0, 0, 1] = 3.0
    assert float(masked_huber(d, torch.zeros_like(d), torch.ones_like(d))) == pytest.approx((0.125 + 2.5) / 2, rel=1e-5)


def test_channel_std_ratio_detects_collapse() -> None:
    spread = torch.randn(4096, 64)
    assert channel_std_ratio(spread) == pytest.approx(1.0, abs=0.05)
    assert channel_std_ratio(torch.ones(4096, 64) + 1e-4 * torch.randn(4096, 64)) < 0.01


def test_overlap_fractions_multiply_to_t_in_range() -> None:
    rng = np.random.default_rng(0)
    products = []
    for _ in range(2000):
        t, f = sample_overlap_fractions(rng)
        assert all(t - 1e-9 <= fd <= 1.0 for fd in f)
        assert math.prod(f) == pytest.approx(t, rel=1e-9)
        products.append(math.prod(f))
    assert 0.4 <= min(products) < 0.42 and 0.78 < max(products) <= 0.8


def test_overlap_views_crops_lie_in_the_base_and_match_their_boxes() -> None:
    p, base = (16, 16, 16), (28, 26, 30)
    volume = coordinate_volume(base)
    views = OverlapViews(p, intensity=IntensityAugmentation.none())
    np.random.seed(0)
    for _ in range(200):
        out = views({"image": volume})
        assert out["views"].shape == (2, 3, *p) and out["boxes"].shape == (2, 6)
        v1, v2 = out["views"]
        lo1, lo2 = v1[:, 0, 0, 0], v2[:, 0, 0, 0]  # start of each crop (coordinates of its first voxel)
        assert np.all(lo1 >= 0) and np.all(v2[:, -1, -1, -1] <= np.array(base) - 1)
        b1, b2 = out["boxes"]
        o = np.round(b2[3:] * np.array(p)).astype(int)
        assert np.allclose(b1[:3], 1 - o / np.array(p)) and np.allclose(b1[3:], 1) and np.allclose(b2[:3], 0)
        assert np.all(lo2 - lo1 == np.array(p) - o)  # crop 1's last o voxels are crop 2's first o voxels
        # the unrounded fractions multiply to t in [0.4, 0.8]; rounding moves each o_d by at most 0.5 voxel
        assert np.prod((o - 0.5) / np.array(p)) <= 0.8 and np.prod((o + 0.5) / np.array(p)) >= 0.4
        assert not np.array_equal(v1, v2)  # never identical fallback crops


def test_too_small_base_redraws_and_impossible_base_is_an_error() -> None:
    p = (32, 32, 32)
    assert min_base_size((128,) * 3, 0.4) == (205, 205, 205) and min_base_size((160,) * 3, 0.4) == (256,) * 3
    small = (44, 44, 44)  # only overlaps with o_d >= 20 (f_d >= 0.625) fit
    assert not fits(small, p, (0.9, 0.9, 0.5))
    views = OverlapViews(p, intensity=IntensityAugmentation.none())
    np.random.seed(1)
    for _ in range(20):
        out = views({"image": np.random.randn(1, *small).astype(np.float32)})
        assert np.all(np.round(out["boxes"][1, 3:] * 32) >= 20)
    with pytest.raises(ValueError, match="train.patch_size to at least"):
        views({"image": np.zeros((1, 34, 34, 34), dtype=np.float32)})


def test_views_get_independent_intensity_augmentation_and_clean_copies() -> None:
    image = 1.0 + np.random.default_rng(0).random(size=(1, 40, 40, 40)).astype(np.float32)
    brightness = dataclasses.replace(IntensityAugmentation.none(), p_brightness=1.0)
    views = OverlapViews((24, 24, 24), intensity=brightness, return_clean=True)
    np.random.seed(5)
    out = views({"image": image})
    ratio = [float(out["views"][i].sum() / out["clean"][i].sum()) for i in range(2)]
    assert ratio[0] != pytest.approx(ratio[1]) and all(0.75 <= r <= 1.25 for r in ratio)
    val = OverlapViews((24, 24, 24), deterministic=True)
    first, second = val({"image": image}), val({"image": image})
    assert np.array_equal(first["views"], second["views"]) and np.array_equal(first["boxes"], second["boxes"])
