"""MIND-SSC and the deformation metrics, against closed forms."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nnssl.registration.metrics import deformation_quality, jacobian_determinant
from nnssl.registration.mind import MIND_CHANNELS, mind_ssc


def test_mind_has_12_channels_in_0_1_and_ignores_linear_intensity_changes():
    generator = torch.Generator().manual_seed(0)
    image = torch.nn.functional.avg_pool3d(torch.rand(1, 1, 30, 28, 26, generator=generator), 3, 1, 1)[0, 0]
    mind = mind_ssc(image)
    assert mind.shape == (MIND_CHANNELS, 30, 28, 26)
    assert float(mind.min()) > 0 and float(mind.max()) <= 1.0 + 1e-6
    assert torch.allclose(mind_ssc(3.0 * image + 5.0), mind, atol=1e-4)  # D and V both scale by a^2
    assert not torch.allclose(mind_ssc(image**3), mind, atol=1e-2)  # a non-linear change does alter it


def test_mind_refuses_several_channels():
    with pytest.raises(ValueError, match="one channel"):
        mind_ssc(torch.zeros(2, 8, 8, 8))


def test_jacobian_of_a_linear_displacement_is_det_of_i_plus_a():
    a = np.array([[0.1, 0.05, 0.0], [0.0, -0.2, 0.03], [0.02, 0.0, 0.3]])
    grid = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in (8, 9, 10)], indexing="ij"))
    u = np.einsum("ij,j...->i...", a, grid)
    det = jacobian_determinant(u)
    assert np.allclose(det, np.linalg.det(np.eye(3) + a))
    quality = deformation_quality(u)
    assert quality["sdlogj"] == pytest.approx(0.0, abs=1e-9)
    assert quality["folding_fraction"] == 0.0


def test_a_mirrored_axis_counts_as_folding():
    grid = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in (6, 6, 6)], indexing="ij"))
    u = np.zeros_like(grid)
    u[0] = -2.0 * grid[0]  # x -> -x: det J = -1
    quality = deformation_quality(u)
    assert quality["folding_fraction"] == 1.0 and quality["positive_jacobian_fraction"] == 0.0
