"""GIN (Ouyang et al. 2021): identity at p 0, norm preserved, alpha endpoints, non-linear, reproducible."""

from __future__ import annotations

import numpy as np
import pytest

from nnssl.transforms.intensity import IntensityAugmentation, frobenius_normalized, gin


def image(seed: int = 0, shape=(1, 16, 16, 16)) -> np.ndarray:
    return (np.random.default_rng(seed).normal(size=shape) + 2.0).astype(np.float32)


def test_p_zero_is_the_identity_and_draws_nothing() -> None:
    x = image()
    np.random.seed(5)
    out = IntensityAugmentation.none()(x)
    after = np.random.uniform()
    np.random.seed(5)
    for _ in range(7):  # IntensityAugmentation.none() draws its 7 decisions, GIN at p 0 none
        np.random.uniform()
    assert np.array_equal(out, x) and after == np.random.uniform()
    np.random.seed(5)
    only_gin = IntensityAugmentation(
        p_noise=0, p_blur=0, p_brightness=0, p_contrast=0, p_low_resolution=0, p_gamma_inverted=0, p_gamma=0, p_gin=1.0
    )(x)
    assert not np.allclose(only_gin, x) and np.linalg.norm(only_gin) == pytest.approx(np.linalg.norm(x), rel=1e-5)


@pytest.mark.parametrize("channels", [1, 2])
def test_output_has_the_input_norm(channels: int) -> None:
    x = image(1, (channels, 12, 10, 8))
    for seed in range(10):
        np.random.seed(seed)
        y = gin(x, num_layers=3, channels=4)
        assert y.shape == x.shape and y.dtype == np.float32
        assert np.linalg.norm(y) == pytest.approx(np.linalg.norm(x), rel=1e-5)
        assert not np.allclose(y, x)


def test_alpha_endpoints() -> None:
    x = image(2)
    np.random.seed(3)
    assert np.allclose(gin(x, alpha=0.0), x, rtol=1e-5, atol=1e-5)
    np.random.seed(3)
    pure = gin(x, alpha=1.0)
    np.random.seed(3)
    half = gin(x, alpha=0.5)
    # alpha 1: the normalised random network alone; alpha 0.5: the normalised blend of it with x
    assert np.allclose(half, frobenius_normalized(0.5 * pure + 0.5 * x, x), rtol=1e-4, atol=1e-4)
    assert np.corrcoef(pure.ravel(), x.ravel())[0, 1] < 0.99


def test_reproducible_from_the_seed() -> None:
    x = image(3)
    np.random.seed(11)
    a = gin(x)
    np.random.seed(11)
    assert np.array_equal(a, gin(x))
    np.random.seed(12)
    assert not np.allclose(a, gin(x))


def test_intensity_map_is_non_linear() -> None:
    """1x1x1 kernels make GIN a voxel-wise map h(x); on a monotone ramp h is not affine for most draws."""
    ramp = np.linspace(0.0, 1.0, 64, dtype=np.float32)[None, :, None, None] * np.ones((1, 64, 2, 2), np.float32)
    design = np.stack([ramp[0, :, 0, 0], np.ones(64)], axis=1)
    residuals = []
    for seed in range(20):
        np.random.seed(seed)
        full = gin(ramp, kernel_sizes=(1,), alpha=1.0)[0]
        assert np.array_equal(full[:, 0, 0], full[:, 1, 1])  # voxel-wise: same input value, same output
        y = full[:, 0, 0]
        coef, *_ = np.linalg.lstsq(design, y, rcond=None)
        residuals.append(np.abs(design @ coef - y).max() / (y.std() + 1e-12))
    non_affine = sum(r > 0.05 for r in residuals)
    assert non_affine >= 10, np.round(residuals, 3)
