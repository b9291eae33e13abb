"""Per-view intensity augmentations on numpy (C, X, Y, Z) float32 arrays (batchgenerators-style).

Every function draws from numpy's global generator (the loader seeds it per sample) and returns a NEW
array: the input is never modified, so a clean target kept by the caller stays clean (methods.md 7 item 8).

Transforms (defaults of :class:`IntensityAugmentation` follow the per-crop list of CVA/VoCo/SimCLR,
methods.md 1.3 and 4.5; Isensee et al., nnU-Net's batchgenerators transforms):

* Gaussian noise ``x + N(0, s^2)``, standard deviation ``s ~ U(0, 0.1)`` (batchgenerators, upstream's library,
  names the range ``noise_variance`` but uses the drawn value as the standard deviation; so do we);
* Rician noise ``sqrt((x + N(0, s^2))^2 + N(0, s^2)^2) * sign(x)`` with the same ``s`` range;
  one of the two noises is applied with ``p_noise`` (0.1);
* Gaussian blur, ``sigma ~ U(0.5, 1)`` per channel (p 0.2 per sample, 0.5 per channel);
* multiplicative brightness ``x * U(0.75, 1.25)`` (p 0.15);
* contrast ``(x - mean) * U(0.75, 1.25) + mean`` clipped to the original [min, max] (p 0.15);
* gamma ``((x - min) / range)^g * range + min`` with ``g`` from [0.7, 1) or [1, 1.5) (each half with
  probability 1/2), then the original mean and std restored; on the inverted image ``-x`` with
  ``p_gamma_inverted`` (0.1) and on the image with ``p_gamma`` (0.3);
* simulated low resolution: nearest-neighbour down-sampling by ``U(0.5, 1)`` per axis-uniform zoom and
  cubic up-sampling back (p 0.1 per sample as upstream's SimCLR/VoCo/CVA, 0.5 per channel);
* GIN, global intensity non-linear augmentation (Ouyang et al. 2021, "Causality-inspired single-source domain
  generalization for medical image segmentation"; :func:`gin`), off by default (``p_gin`` 0), applied last.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

EPS = 1e-7
#: Negative slope of the leaky ReLU between GIN's random convolutions (our choice; the paper does not fix one).
GIN_NEGATIVE_SLOPE = 0.2


def _uniform(low: float, high: float) -> float:
    return float(np.random.uniform(low, high))


def gaussian_noise(x: np.ndarray, std_range: tuple[float, float] = (0.0, 0.1)) -> np.ndarray:
    """``x + N(0, s^2)`` with ``s ~ U(std_range)`` (one draw per call)."""
    sigma = _uniform(*std_range)
    return (x + np.random.normal(0.0, sigma, size=x.shape)).astype(np.float32)


def rician_noise(x: np.ndarray, std_range: tuple[float, float] = (0.0, 0.1)) -> np.ndarray:
    """Rician noise as batchgenerators: ``sqrt((x + n1)^2 + n2^2) * sign(x)``, ``n1, n2 ~ N(0, s^2)``.

    ``s ~ U(std_range)``, one draw per call.
    """
    sigma = _uniform(*std_range)
    n1 = np.random.normal(0.0, sigma, size=x.shape)
    n2 = np.random.normal(0.0, sigma, size=x.shape)
    return (np.sqrt((x + n1) ** 2 + n2**2) * np.sign(x)).astype(np.float32)


def gaussian_blur(
    x: np.ndarray, sigma_range: tuple[float, float] = (0.5, 1.0), p_per_channel: float = 0.5
) -> np.ndarray:
    """Per channel (with ``p_per_channel``) a Gaussian blur with ``sigma ~ U(sigma_range)`` (scipy.ndimage)."""
    out = x.astype(np.float32, copy=True)
    for c in range(out.shape[0]):
        if np.random.uniform() < p_per_channel:
            out[c] = ndimage.gaussian_filter(out[c], _uniform(*sigma_range), mode="nearest")
    return out


def brightness_multiplicative(x: np.ndarray, multiplier_range: tuple[float, float] = (0.75, 1.25)) -> np.ndarray:
    """``x * U(multiplier_range)``."""
    return (x * _uniform(*multiplier_range)).astype(np.float32)


def contrast(x: np.ndarray, factor_range: tuple[float, float] = (0.75, 1.25)) -> np.ndarray:
    """Per channel ``(x - mean) * f + mean`` with ``f ~ U(factor_range)``, clipped to the channel's [min, max]."""
    out = np.empty_like(x, dtype=np.float32)
    for c in range(x.shape[0]):
        channel = x[c]
        mean, lo, hi = channel.mean(), channel.min(), channel.max()
        out[c] = np.clip((channel - mean) * _uniform(*factor_range) + mean, lo, hi)
    return out


def gamma(x: np.ndarray, gamma_range: tuple[float, float] = (0.7, 1.5), invert: bool = False) -> np.ndarray:
    """Gamma on the [0, 1]-rescaled channel, original mean/std restored; ``invert`` applies it to ``-x``."""
    out = np.empty_like(x, dtype=np.float32)
    for c in range(x.shape[0]):
        channel = -x[c] if invert else x[c]
        mean, std = channel.mean(), channel.std()
        if gamma_range[0] < 1 and np.random.uniform() < 0.5:
            g = _uniform(gamma_range[0], 1.0)
        else:
            g = _uniform(max(gamma_range[0], 1.0), gamma_range[1])
        lo = channel.min()
        span = channel.max() - lo
        res = np.power((channel - lo) / (span + EPS), g) * span + lo
        res = (res - res.mean()) / (res.std() + 1e-8) * std + mean
        out[c] = -res if invert else res
    return out


def simulate_low_resolution(
    x: np.ndarray, zoom_range: tuple[float, float] = (0.5, 1.0), p_per_channel: float = 0.5
) -> np.ndarray:
    """Per channel (``p_per_channel``): nearest down-sampling by ``U(zoom_range)`` and cubic up-sampling back."""
    out = x.astype(np.float32, copy=True)
    shape = np.array(x.shape[1:])
    for c in range(out.shape[0]):
        if np.random.uniform() >= p_per_channel:
            continue
        small = np.maximum(1, np.round(shape * _uniform(*zoom_range)).astype(int))
        down = ndimage.zoom(out[c], small / shape, order=0, mode="nearest", grid_mode=True)
        up = ndimage.zoom(down, shape / np.array(down.shape), order=3, mode="nearest", grid_mode=True)
        out[c] = up[tuple(slice(0, s) for s in shape)]
    return out


def frobenius_normalized(y: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """``y * ||reference||_F / ||y||_F`` (``y`` unchanged where its norm is 0)."""
    norm = float(np.linalg.norm(y.astype(np.float64).ravel()))
    if norm == 0.0:
        return y
    return y * (float(np.linalg.norm(reference.astype(np.float64).ravel())) / norm)


def gin(
    x: np.ndarray,
    num_layers: int = 4,
    channels: int = 2,
    kernel_sizes: Sequence[int] = (1, 3),
    alpha: float | None = None,
) -> np.ndarray:
    """GIN (Ouyang et al. 2021): a random, gradient-free shallow convolutional network applied to ``x`` (C, X, Y, Z).

    ``g`` = ``num_layers`` 3D convolutions ``C -> channels -> ... -> channels -> C``, each with a kernel size drawn
    from ``kernel_sizes`` ('same' zero padding) and weights and biases ~ N(0, 1), leaky ReLU (slope
    :data:`GIN_NEGATIVE_SLOPE`) between them; everything is drawn afresh per call from numpy's generator (the
    loader seeds it per sample, so a sample's augmentation is reproducible from the sampler's seed). With
    ``n(y) = y ||x||_F / ||y||_F`` and ``alpha ~ U(0, 1)`` (unless given):

        ``GIN(x) = n(alpha * n(g(x)) + (1 - alpha) * x)``

    the convolution output brought to the input's norm, blended with the input, and the blend brought back to the
    input's Frobenius norm (the paper's normalisation), so ``||GIN(x)||_F = ||x||_F``; ``alpha = 0`` returns ``x``,
    ``alpha = 1`` the normalised ``g(x)``. The random map is non-linear and, with 3^3 kernels, mixes neighbouring
    voxels: it changes contrast the way another modality would while keeping the shapes.
    """
    if num_layers < 1 or channels < 1 or not kernel_sizes:
        raise ValueError(f"gin needs num_layers >= 1, channels >= 1 and kernel sizes, got {num_layers}, {channels}.")
    if alpha is None:
        alpha = float(np.random.uniform(0.0, 1.0))
    c = x.shape[0]
    widths = [c] + [channels] * (num_layers - 1) + [c]
    with torch.no_grad():
        h = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[None]
        for i in range(num_layers):
            k = int(kernel_sizes[np.random.randint(len(kernel_sizes))])
            weight = torch.from_numpy(np.random.standard_normal((widths[i + 1], widths[i], k, k, k)).astype(np.float32))
            bias = torch.from_numpy(np.random.standard_normal(widths[i + 1]).astype(np.float32))
            h = F.conv3d(h, weight, bias, padding=k // 2)
            if i < num_layers - 1:
                h = F.leaky_relu(h, GIN_NEGATIVE_SLOPE)
        out = h[0].numpy()
    blend = alpha * frobenius_normalized(out, x) + (1.0 - alpha) * x
    return frobenius_normalized(blend, x).astype(np.float32)


@dataclass
class IntensityAugmentation:
    """Random intensity augmentation of one view (see the module docstring for each transform).

    ``__call__(x)`` returns a new float32 array of the same shape; the probabilities are per call
    (per view). :meth:`none` gives the identity (validation), which still returns a copy.
    """

    p_noise: float = 0.1
    p_rician_given_noise: float = 0.5
    noise_std: tuple[float, float] = (0.0, 0.1)
    p_blur: float = 0.2
    blur_sigma: tuple[float, float] = (0.5, 1.0)
    p_brightness: float = 0.15
    brightness_range: tuple[float, float] = (0.75, 1.25)
    p_contrast: float = 0.15
    contrast_range: tuple[float, float] = (0.75, 1.25)
    p_low_resolution: float = 0.1
    low_resolution_zoom: tuple[float, float] = (0.5, 1.0)
    p_gamma_inverted: float = 0.1
    p_gamma: float = 0.3
    gamma_range: tuple[float, float] = (0.7, 1.5)
    p_gin: float = 0.0
    gin_num_layers: int = 4
    gin_channels: int = 2

    @classmethod
    def none(cls) -> IntensityAugmentation:
        """No augmentation (every probability 0)."""
        return cls(
            p_noise=0.0,
            p_blur=0.0,
            p_brightness=0.0,
            p_contrast=0.0,
            p_low_resolution=0.0,
            p_gamma_inverted=0.0,
            p_gamma=0.0,
        )

    def __call__(self, x: np.ndarray) -> np.ndarray:
        out = np.array(x, dtype=np.float32, copy=True)
        if np.random.uniform() < self.p_noise:
            if np.random.uniform() < self.p_rician_given_noise:
                out = rician_noise(out, self.noise_std)
            else:
                out = gaussian_noise(out, self.noise_std)
        if np.random.uniform() < self.p_blur:
            out = gaussian_blur(out, self.blur_sigma)
        if np.random.uniform() < self.p_brightness:
            out = brightness_multiplicative(out, self.brightness_range)
        if np.random.uniform() < self.p_contrast:
            out = contrast(out, self.contrast_range)
        if np.random.uniform() < self.p_low_resolution:
            out = simulate_low_resolution(out, self.low_resolution_zoom)
        if np.random.uniform() < self.p_gamma_inverted:
            out = gamma(out, self.gamma_range, invert=True)
        if np.random.uniform() < self.p_gamma:
            out = gamma(out, self.gamma_range, invert=False)
        if self.p_gin > 0 and np.random.uniform() < self.p_gin:  # no draw at p 0: other augmentations' draws unchanged
            out = gin(out, self.gin_num_layers, self.gin_channels)
        return out
