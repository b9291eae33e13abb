"""The registration pipeline on real demo anatomy: geometry, the shared PCA basis, a known smooth deformation
recovered from MIND-SSC features, affine pre-alignment, world displacement, evaluation of pairs."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nnssl.evaluation.eval_set import load_eval_set
from nnssl.evaluation.images import PreparedImage, prepare_image
from nnssl.evaluation.sliding_window import VolumeFeatures
from nnssl.registration.convex_adam import warp
from nnssl.registration.geometry import affine_prealignment, moving_positions, sample_moving, voxel_map
from nnssl.registration.pipeline import (
    RegistrationSettings,
    joint_feature_maps,
    register_prepared,
    registration_plan,
)

DEMO = load_eval_set("demo")


@pytest.fixture(scope="module")
def colin() -> PreparedImage:
    """Colin27 with its six lobe labels at 3 mm (about 50 x 60 x 50 voxels)."""
    case = DEMO.case("colin27")
    return prepare_image(case.image, registration_plan(3.0), case.label, name="colin27")


def flipped_copy(image: PreparedImage) -> PreparedImage:
    """The same image stored with its first array axis reversed and the affine adjusted: the same world content."""
    n = image.shape[0]
    flip = np.eye(4)
    flip[0, 0], flip[0, 3] = -1.0, n - 1
    return dataclasses.replace(
        image,
        data=np.ascontiguousarray(image.data[:, ::-1]),
        label=np.ascontiguousarray(image.label[::-1]),
        affine=image.affine @ flip,
    )


def test_the_world_mapping_aligns_an_image_stored_differently(colin):
    moving = flipped_copy(colin)
    matrix = voxel_map(colin.affine, moving.affine)
    resampled = sample_moving(moving.label[None], moving_positions(colin.shape, matrix), mode="nearest")[0]
    assert np.array_equal(resampled.numpy().astype(np.int16), colin.label)
    settings = RegistrationSettings()
    result = register_prepared(colin, moving, None, settings)
    assert result.metrics["mean_dice_before"] == 1.0
    assert result.metrics["mean_dice_after"] > 0.99
    assert float(result.displacement.abs().max()) < 0.1  # the same anatomy: nothing to deform


def test_fixed_and_moving_features_share_one_pca_basis(colin):
    generator = torch.Generator().manual_seed(0)
    dense = torch.randn(16, *(int(np.ceil(n / 4)) for n in colin.shape), generator=generator)
    features = VolumeFeatures(dense=dense, stride=4, embedding=torch.zeros(16), stages=(0,))
    positions = moving_positions(colin.shape, np.eye(4))
    a, b, ratios = joint_feature_maps(features, features, colin, colin, positions, RegistrationSettings())
    assert a.shape == (8, *colin.shape) and len(ratios) == 8
    assert torch.allclose(a, b, atol=1e-5)  # the same volume projects to the same map
    other = VolumeFeatures(dense=dense * 2.0 + 1.0, stride=4, embedding=torch.zeros(16), stages=(0,))
    _, c, _ = joint_feature_maps(features, other, colin, colin, positions, RegistrationSettings())
    assert not torch.allclose(a, c, atol=1e-2)  # ... with a basis fitted on both maps


def smooth_field(shape, amplitude: float, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.randn(1, 3, 4, 4, 4, generator=generator)
    field = F.interpolate(coarse, size=shape, mode="trilinear", align_corners=False)
    return field * (amplitude / float(field.abs().max()))


def test_a_known_smooth_deformation_is_recovered_from_mind_features(colin):
    field = smooth_field(colin.shape, amplitude=4.0, seed=0)  # up to 4 voxels = 12 mm
    data = warp(torch.as_tensor(colin.data)[None], field)[0].numpy()
    label = warp(torch.as_tensor(colin.label, dtype=torch.float32)[None, None], field, mode="nearest")[0, 0]
    moving = dataclasses.replace(colin, data=data, label=label.numpy().astype(np.int16))
    result = register_prepared(colin, moving, None, RegistrationSettings())
    m = result.metrics
    assert m["mean_dice_after"] > 0.9
    assert m["mean_dice_after"] > m["mean_dice_before"] + 0.05
    assert m["positive_jacobian_percent"] >= 99.0
    # moving(y) = fixed(y + f(y)): fixed voxel x lies at moving y = x + u(x) with u(x) = -f(x + u(x)) (fixed point)
    expected = -field
    for _ in range(10):
        expected = -warp(field, expected)
    inside = colin.label > 0
    error = (result.displacement - expected[0]).norm(dim=0).numpy()[inside]
    assert float(np.median(error)) < 0.6  # voxels (measured 0.29 at 3 mm)


def test_affine_prealignment_recovers_a_world_translation(colin):
    shifted = np.eye(4)
    shifted[:3, 3] = (9.0, -6.0, 4.5)  # mm
    moving = dataclasses.replace(colin, affine=shifted @ colin.affine)  # the same voxels, 9 mm further in x, ...
    world = affine_prealignment(colin.data[0], colin.affine, moving.data[0], moving.affine)
    assert np.allclose(world[:3, 3], shifted[:3, 3], atol=1.0)
    assert np.allclose(world[:3, :3], np.eye(3), atol=0.03)
    result = register_prepared(colin, moving, None, RegistrationSettings(), world_transform=world)
    assert result.metrics["mean_dice_before"] < 0.8 < result.metrics["mean_dice_after_affine"]
    d = result.world_displacement()
    centre = tuple(n // 2 for n in colin.shape)
    assert np.allclose(d[centre], shifted[:3, 3], atol=1.5)  # fixed point p -> moving point p + d(p)
