"""GVSL with numbers: NCC's invariances and fp32 safety, the warps' identities and a translation round trip, the
smoothness closed form, the differentiable affine matrix, views without aliasing, and the pairing of cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from nnssl.architectures import ARCHITECTURES
from nnssl.losses.gvsl import local_ncc, ncc_loss, smoothness_loss
from nnssl.methods.gvsl import GVSL, GVSLAppearance, GVSLConfig, increasing_bezier, shuffle_random_blocks
from nnssl.transforms.registration import (
    SpatialAugmentation,
    affine_matrix,
    affine_warp,
    displacement_warp,
    identity_grid,
)


def textured(shape=(2, 1, 16, 16, 16), seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------------------- NCC
@pytest.mark.parametrize(("a", "b"), [(1.0, 0.0), (2.5, -3.0), (0.3, 7.0)])
def test_ncc_of_an_increasing_affine_intensity_map_is_perfect(a: float, b: float) -> None:
    image = textured()
    assert float(ncc_loss(image, a * image + b)) == pytest.approx(float(ncc_loss(image, image)), abs=1e-6)
    assert float(ncc_loss(image, a * image + b)) < 1e-4  # cc = 1 wherever the window has variance
    assert float(ncc_loss(image, textured(seed=1))) > 0.9  # two independent noise images barely correlate


def test_ncc_with_a_constant_image_is_finite_and_maximal() -> None:
    image = textured()
    for other in (torch.zeros_like(image), torch.full_like(image, 3.0)):
        value = ncc_loss(image, other)
        assert math.isfinite(float(value)) and float(value) == pytest.approx(1.0)
    assert float(ncc_loss(torch.zeros_like(image), torch.zeros_like(image))) == pytest.approx(1.0)


def test_ncc_border_windows_use_only_voxels_inside() -> None:
    """At a corner the 9^3 window holds 5^3 voxels; cc there is still exactly that of the inside voxels."""
    image = textured((1, 1, 12, 12, 12))
    cc = local_ncc(image, 2.0 * image + 1.0)
    assert torch.allclose(cc[0, 0, 0, 0, 0], torch.tensor(1.0), atol=1e-6)


def test_ncc_is_computed_in_fp32_under_autocast_and_from_half_inputs() -> None:
    image = textured() * 100.0  # window sums of squares ~7e6: beyond fp16's range
    reference = ncc_loss(image, 0.5 * image + 1.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = ncc_loss(image, 0.5 * image + 1.0)
    assert under_autocast.dtype == torch.float32 and float(under_autocast) == pytest.approx(float(reference), abs=1e-6)
    half = ncc_loss(image.half(), (0.5 * image + 1.0).half())
    assert math.isfinite(float(half)) and float(half) < 1e-3


# ----------------------------------------------------------------------------------------- warps and smoothness
def test_identity_transforms_return_the_input() -> None:
    image = textured((2, 3, 8, 10, 12))
    assert torch.equal(displacement_warp(image, torch.zeros(2, 3, 8, 10, 12)), image)
    identity = affine_matrix(torch.zeros(2, 3), torch.ones(2, 3), torch.zeros(2, 6), torch.zeros(2, 3))
    assert torch.equal(identity, torch.eye(3, 4).expand(2, 3, 4))
    assert torch.allclose(affine_warp(image, identity), image, atol=1e-5)


def test_a_known_translation_is_warped_and_unwarped() -> None:
    image = textured((1, 1, 12, 12, 12))
    shift = torch.tensor([2.0, 0.0, -1.0]).view(1, 3, 1, 1, 1).expand(1, 3, 12, 12, 12)
    warped = displacement_warp(image, shift)  # out[p] = x[p + t]
    assert torch.equal(warped[..., :10, :, 1:], image[..., 2:, :, :11])
    assert torch.equal(warped[..., 10:, :, :], torch.zeros_like(warped[..., 10:, :, :]))  # sampled outside: 0
    back = displacement_warp(warped, -shift)
    assert torch.equal(back[..., 2:, :, :11], image[..., 2:, :, :11])


def test_an_affine_translation_moves_images_and_coarser_feature_maps_alike() -> None:
    """Normalised coordinates: translating by 0.5 (a quarter of the side) moves 16^3 by 4 voxels and 8^3 by 2."""
    theta = torch.eye(3, 4)[None].clone()
    theta[0, 2, 3] = 0.5  # the third column acts on the first array axis
    for side in (16, 8):
        image = textured((1, 1, side, side, side))
        out = affine_warp(image, theta)
        k = side // 4
        assert torch.allclose(out[..., : side - k, :, :], image[..., k:, :, :], atol=1e-5)


def test_smoothness_of_constant_and_linear_displacements() -> None:
    assert float(smoothness_loss(torch.full((2, 3, 6, 7, 8), 4.2))) == 0.0
    g = torch.randn(3, 3, generator=torch.Generator().manual_seed(3))
    field = torch.einsum("km,mxyz->kxyz", g, identity_grid((6, 7, 8))[0])[None]
    assert float(smoothness_loss(field)) == pytest.approx(float((g**2).sum()) / 9.0, rel=1e-5)


def test_the_affine_matrix_is_differentiable() -> None:
    """Upstream builds it with torch.tensor(...) from Python scalars, so its affine head never gets a gradient."""
    params = [torch.zeros(1, 3, requires_grad=True), torch.ones(1, 3, requires_grad=True)]
    params += [torch.zeros(1, 6, requires_grad=True), torch.zeros(1, 3, requires_grad=True)]
    affine_warp(textured((1, 1, 8, 8, 8)), affine_matrix(*params)).sum().backward()
    assert all(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in params)


def test_spatial_augmentation_without_ranges_is_the_identity() -> None:
    aug = SpatialAugmentation(0.0, (1.0, 1.0), 0.0, 0.0, (0.0, 0.0), (1.0, 1.0))
    theta, displacement = aug.draw(2, (8, 8, 8))
    image = textured((2, 1, 8, 8, 8))
    assert displacement is None and torch.allclose(aug.apply(image, theta, displacement), image, atol=1e-5)


# ----------------------------------------------------------------------------------------- views
def test_appearance_view_is_a_new_array_and_the_target_stays_clean() -> None:
    np.random.seed(0)
    image = np.random.normal(size=(1, 20, 20, 20)).astype(np.float32)
    out = GVSLAppearance(GVSLConfig(), augment=True)({"image": image})
    assert not np.shares_memory(out["image"], out["image_app"]) and not np.shares_memory(out["image"], image)
    assert np.array_equal(out["image"], image) and not np.array_equal(out["image_app"], image)
    before = out["image"].copy()
    out["image_app"] += 1.0
    assert np.array_equal(out["image"], before)
    off = GVSLConfig(shuffle_p=0.0, nonlinear_p=0.0, inpaint_continue=0.0)
    assert np.allclose(GVSLAppearance(off, augment=True)({"image": image})["image_app"], image, atol=1e-5)


def test_shuffle_and_bezier_keep_the_values_and_the_order() -> None:
    np.random.seed(1)
    u = np.random.uniform(size=(1, 20, 20, 20))
    shuffled = shuffle_random_blocks(u, 0.6)
    assert not np.array_equal(shuffled, u) and shuffled.shape == u.shape
    assert set(np.round(shuffled.ravel(), 12)) <= set(np.round(u.ravel(), 12))  # only moved, never invented
    ramp = np.linspace(0, 1, 101)
    mapped = increasing_bezier(ramp)
    assert mapped[0] == pytest.approx(0.0) and mapped[-1] == pytest.approx(1.0) and np.all(np.diff(mapped) >= 0)


# ----------------------------------------------------------------------------------------- the method
@pytest.fixture(scope="module")
def method() -> GVSL:
    torch.manual_seed(0)
    cfg = GVSLConfig(affine_hidden=16, spatial_aug=False)
    return GVSL(cfg, ARCHITECTURES.get("ResEncTiny"), (16, 16, 16))


def test_each_image_is_registered_onto_another_case_of_its_batch(method: GVSL) -> None:
    fixed = textured((3, 1, 16, 16, 16), seed=5)
    out = method({"image": fixed, "image_app": fixed.clone()})
    expected = float(ncc_loss(fixed, fixed.roll(1, dims=0)))
    assert out.metrics["ncc_unregistered"] == pytest.approx(expected, abs=1e-6)
    # at initialisation the heads are near the identity: the warped moving image is close to the unwarped one
    assert out.metrics["ncc"] == pytest.approx(expected, abs=5e-3)
    assert math.isfinite(float(out.loss.detach()))
    with pytest.raises(ValueError, match="another case"):
        method({"image": fixed[:1], "image_app": fixed[:1]})
