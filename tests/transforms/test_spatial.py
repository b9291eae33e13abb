"""Spatial augmentation maths: rotation matrices, drawn probabilities, resampling against a closed form."""

from __future__ import annotations

import numpy as np
import pytest

from nnssl.transforms.spatial import (
    SpatialParams,
    draw_spatial_params,
    mirror,
    read_region,
    resample_patch,
    rotation_matrix,
    source_region,
)


def test_rotation_matrix_is_a_rotation() -> None:
    r = rotation_matrix((0.3, -0.2, 0.5))
    np.testing.assert_allclose(r @ r.T, np.eye(3), atol=1e-12)
    assert np.isclose(np.linalg.det(r), 1.0)
    np.testing.assert_allclose(rotation_matrix((np.pi / 2, 0, 0)) @ [0, 1, 0], [0, 0, 1], atol=1e-12)


def test_draw_probabilities_and_ranges() -> None:
    rng = np.random.default_rng(0)
    draws = [draw_spatial_params(rng, 0.2, 30.0, 0.2, (0.7, 1.4), (0, 2)) for _ in range(4000)]
    rotated = [d for d in draws if d.angles is not None]
    scaled = [d for d in draws if d.scale is not None]
    assert abs(len(rotated) / 4000 - 0.2) < 0.03 and abs(len(scaled) / 4000 - 0.2) < 0.03
    assert max(abs(a) for d in rotated for a in d.angles) <= np.radians(30)
    assert all(0.7 <= d.scale <= 1.4 for d in scaled)
    assert not any(d.mirror[1] for d in draws)  # axis 1 is not in mirror_axes
    assert abs(np.mean([d.mirror[0] for d in draws]) - 0.5) < 0.03
    # upstream's fraction of resampled samples: 1 - 0.8^2 = 36%
    assert abs(np.mean([not d.is_identity_map for d in draws]) - 0.36) < 0.03


@pytest.mark.parametrize("order", [0, 1, 3])
def test_rotation_by_90_degrees_equals_an_axis_permutation(order: int) -> None:
    rng = np.random.default_rng(1)
    volume = rng.standard_normal((1, 30, 30, 30)).astype(np.float32)
    params = SpatialParams(angles=(np.pi / 2, 0.0, 0.0))
    centre = np.array([14.5, 14.5, 14.5])  # the patch centre of volume[:, 7:23, 7:23, 7:23]
    lo, hi = source_region(centre, (16, 16, 16), params)
    out = resample_patch(read_region(volume, lo, hi), lo, centre, (16, 16, 16), params, order=order)
    crop = volume[:, 7:23, 7:23, 7:23]
    # x_in = R (o - c): input axis 1 = -(o_2 - c), input axis 2 = (o_1 - c)
    expected = np.flip(np.transpose(crop, (0, 1, 3, 2)), axis=3)
    np.testing.assert_allclose(out, expected, atol=1e-4)


def test_masks_resample_to_binary_values() -> None:
    mask = np.zeros((1, 24, 24, 24), dtype=np.int8)
    mask[:, 6:18, 6:18, 6:18] = 1
    params = SpatialParams(angles=(0.3, 0.2, -0.4), scale=1.2)
    centre = np.array([11.5, 11.5, 11.5])
    lo, hi = source_region(centre, (16, 16, 16), params)
    out = resample_patch(read_region(mask, lo, hi), lo, centre, (16, 16, 16), params, order=0)
    assert out.dtype == np.int8 and set(np.unique(out)) == {0, 1}


def test_read_region_pads_outside_the_volume() -> None:
    volume = np.arange(2 * 4 * 4 * 4, dtype=np.float32).reshape(2, 4, 4, 4) + 1
    out = read_region(volume, (-2, 1, 0), (2, 5, 4))
    assert out.shape == (2, 4, 4, 4)
    assert np.all(out[:, :2] == 0) and np.all(out[:, :, 3] == 0)
    np.testing.assert_array_equal(out[:, 2:, :3], volume[:, 0:2, 1:4])


def test_mirror() -> None:
    a = np.arange(8).reshape(1, 2, 2, 2)
    np.testing.assert_array_equal(mirror(a, (False, True, False)), a[:, :, ::-1])
    assert mirror(a, (False, False, False)) is a
