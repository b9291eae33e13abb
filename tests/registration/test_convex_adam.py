"""ConvexAdam on feature maps: the behaviours the paper's method must show (methods.md 5, minimal tests)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nnssl.registration.convex_adam import (
    ConvexAdamSettings,
    convex_adam,
    diffusion_regulariser,
    smooth_field,
    warp,
)
from nnssl.registration.metrics import deformation_quality


def smooth_features(shape=(48, 54, 42), channels: int = 4, seed: int = 0) -> torch.Tensor:
    """(C, X, Y, Z) random features smoothed to a few voxels' correlation length, standardised."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(1, channels, *shape, generator=generator)
    for _ in range(3):
        x = F.avg_pool3d(F.pad(x, [2] * 6, mode="replicate"), 5, stride=1)
    return ((x - x.mean()) / x.std())[0]


def test_identity_gives_no_displacement():
    fixed = smooth_features()
    u = convex_adam(fixed, fixed.clone())
    assert u.shape == (3, *fixed.shape[1:])
    assert float(u.abs().max()) < 0.1


@pytest.mark.parametrize("shift", [(5, 0, 0), (0, -7, 0), (0, 0, 9), (3, -4, 6)])
def test_integer_translation_within_the_search_range_is_recovered(shift):
    fixed = smooth_features()
    moving = torch.roll(fixed, shifts=shift, dims=(1, 2, 3))  # moving(y) = fixed(y - s): u = +s everywhere
    u = convex_adam(fixed, moving)
    interior = u[:, 12:-12, 12:-12, 12:-12]
    error = (interior - torch.tensor(shift, dtype=torch.float32).view(3, 1, 1, 1)).abs()
    assert float(error.max()) <= 0.5


def test_the_adam_step_refines_a_subvoxel_translation():
    fixed = smooth_features(seed=1)
    shape = fixed.shape[1:]
    true = torch.zeros(1, 3, *shape)
    true[:, 0] = 2.5
    moving = warp(fixed[None], -true)[0]  # moving(y) = fixed(y - 2.5 e0)
    errors = {}
    for iterations in (0, 80):
        u = convex_adam(fixed, moving, ConvexAdamSettings(adam_iterations=iterations))
        errors[iterations] = float((u[0, 12:-12, 12:-12, 12:-12] - 2.5).abs().mean())
    assert errors[80] < 0.25 < errors[0]


def test_default_regularisation_keeps_the_deformation_invertible():
    fixed = smooth_features(seed=2)
    shape = fixed.shape[1:]
    generator = torch.Generator().manual_seed(3)
    field = torch.randn(1, 3, *(max(2, n // 12) for n in shape), generator=generator) * 2.0
    field = F.interpolate(field, size=shape, mode="trilinear", align_corners=False)
    moving = warp(fixed[None], field)[0]
    u = convex_adam(fixed, moving)
    quality = deformation_quality(u)
    assert quality["positive_jacobian_fraction"] >= 0.99
    assert quality["folding_fraction"] <= 0.01


def test_any_shape_is_padded_and_cropped_back():
    fixed = smooth_features(shape=(37, 41, 29))
    u = convex_adam(fixed, torch.roll(fixed, shifts=(4, 0, 0), dims=(1, 2, 3)))
    assert u.shape == (3, 37, 41, 29)
    assert abs(float(u[0, 10:-10, 10:-10, 8:-8].mean()) - 4.0) < 0.5


def test_diffusion_regulariser_of_a_linear_field():
    field = torch.zeros(1, 3, 6, 5, 4)
    field[0, 0] = 0.5 * torch.arange(6, dtype=torch.float32).view(6, 1, 1)
    field[0, 2] = 2.0 * torch.arange(4, dtype=torch.float32).view(1, 1, 4)
    # forward differences: 0.5 along axis 0 in channel 0 (1/3 of the entries), 2 along axis 2 in channel 2
    expected = 0.25 / 3 + 4.0 / 3
    assert float(diffusion_regulariser(field)) == pytest.approx(expected, rel=1e-6)
    assert float(smooth_field(field, 3, 2)[0, 0, 2, 2, 2]) == pytest.approx(1.0, rel=1e-6)  # linear fields stay


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="smoothing_kernel must be an odd number"):
        ConvexAdamSettings(smoothing_kernel=2).check()
    with pytest.raises(ValueError, match="adam_lr must be > 0"):
        ConvexAdamSettings(adam_lr=0).check()
    with pytest.raises(ValueError, match="too small for grid_spacing 6"):
        convex_adam(torch.zeros(2, 6, 20, 20), torch.zeros(2, 6, 20, 20))
    with pytest.raises(ValueError, match="of one shape"):
        convex_adam(torch.zeros(2, 12, 12, 12), torch.zeros(3, 12, 12, 12))
