"""Intensity augmentations: new arrays (no aliasing), shapes/dtypes, the documented effects."""

from __future__ import annotations

import numpy as np
import pytest

from nnssl.transforms import intensity as it


def _vol(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(1, 16, 16, 16)).astype(np.float32)


FUNCTIONS = [
    it.gaussian_noise,
    it.rician_noise,
    lambda x: it.gaussian_blur(x, p_per_channel=1.0),
    it.brightness_multiplicative,
    it.contrast,
    it.gamma,
    lambda x: it.gamma(x, invert=True),
    lambda x: it.simulate_low_resolution(x, p_per_channel=1.0),
    it.IntensityAugmentation(p_noise=1, p_blur=1, p_brightness=1, p_contrast=1, p_low_resolution=1, p_gamma=1),
    it.IntensityAugmentation.none(),
]


@pytest.mark.parametrize("fn", FUNCTIONS)
def test_returns_a_new_float32_array_and_leaves_the_input_alone(fn) -> None:
    np.random.seed(0)
    x = _vol()
    clean = x.copy()
    out = fn(x)
    assert out.shape == x.shape and out.dtype == np.float32
    assert not np.shares_memory(out, x)
    np.testing.assert_array_equal(x, clean)
    out += 1.0
    np.testing.assert_array_equal(x, clean)


def test_effects() -> None:
    np.random.seed(1)
    x = _vol()
    np.testing.assert_array_equal(it.IntensityAugmentation.none()(x), x)
    ratio = it.brightness_multiplicative(x) / np.where(x == 0, 1, x)
    assert 0.75 <= float(ratio.mean()) <= 1.25 and float(ratio.std()) < 1e-5
    g = it.gamma(x)
    assert float(g.mean()) == pytest.approx(float(x.mean()), abs=1e-4)
    assert float(g.std()) == pytest.approx(float(x.std()), rel=1e-3)
    c = it.contrast(x)
    assert c.min() >= x.min() and c.max() <= x.max()
    blurred = it.gaussian_blur(x, p_per_channel=1.0)
    assert float(blurred.std()) < 0.8 * float(x.std())
    low = it.simulate_low_resolution(x, zoom_range=(0.5, 0.5), p_per_channel=1.0)
    assert not np.allclose(low, x)
    noisy = it.gaussian_noise(x, (0.05, 0.05))
    assert float((noisy - x).std()) == pytest.approx(0.05, rel=0.1)  # the drawn value is the std (batchgenerators)


def test_noise_strength_and_low_resolution_probability_match_upstream() -> None:
    """Upstream (batchgenerators) draws s ~ U(0, 0.1) and uses it as the std: the mean noise std is 0.05, not the
    0.21 of sqrt(U(0, 0.1)); low resolution is applied to 10% of the views by default."""
    x = np.zeros((1, 16, 16, 16), dtype=np.float32)
    np.random.seed(0)
    stds = [float(it.gaussian_noise(x).std()) for _ in range(400)]
    assert max(stds) <= 0.1 * 1.05 and float(np.mean(stds)) == pytest.approx(0.05, rel=0.1)
    rician = it.rician_noise(x + 3.0, (0.1, 0.1))
    assert float(rician.mean()) == pytest.approx(3.0, abs=0.01)  # far from 0 Rician noise is nearly Gaussian
    assert it.IntensityAugmentation().p_low_resolution == 0.1


def test_augmentation_is_reproducible_under_the_loader_seed() -> None:
    aug = it.IntensityAugmentation()
    x = _vol()
    np.random.seed(5)
    a = [aug(x) for _ in range(5)]
    np.random.seed(5)
    b = [aug(x) for _ in range(5)]
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)
