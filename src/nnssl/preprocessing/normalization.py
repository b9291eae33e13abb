"""Intensity normalization schemes, registered by upstream's names in :data:`NORMALIZERS`.

Each scheme maps one channel ``x`` and its foreground mask to ``(x_normalized, stats)``:

- ``ZScoreNormalization``: ``(x - mu) / max(sigma, 1e-8)`` with mu, sigma computed over the foreground only and
  applied to every voxel (upstream computed them over the whole cropped box, background zeros included). mu, sigma
  and the map are computed in float64 (chunk by chunk), so values near float32's limit do not overflow.
- ``CTNormalization``: clip to the Hounsfield window [-1000, 2000], then z-score with foreground statistics.
- ``NoNormalization``: cast to float32.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from nnssl.registry import Registry

Normalizer = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, dict[str, Any]]]
NORMALIZERS: Registry[Normalizer] = Registry("normalization scheme")

STD_FLOOR = 1e-8
#: voxels per chunk of the float64 statistics and z-score (8 MiB of float64)
CHUNK = 1 << 20
CT_WINDOW = (-1000.0, 2000.0)


def _chunks(n: int) -> list[slice]:
    return [slice(start, min(start + CHUNK, n)) for start in range(0, n, CHUNK)]


def _foreground_stats(x: np.ndarray, foreground: np.ndarray) -> tuple[float, float]:
    """Mean and std of the foreground voxels (all voxels if there is none), accumulated in float64.

    Float32 arithmetic overflows for values near its limit (3.4e38: ``x - mean`` or its square becomes Inf);
    float64 holds the squares of any float32 value. Work is done in chunks of :data:`CHUNK` voxels, so the extra
    memory is one float64 chunk, not a float64 copy of the volume.
    """
    values = (x[foreground] if foreground.any() else x).ravel()
    if values.size == 0:
        return 0.0, 0.0
    total = sum(float(np.sum(values[part], dtype=np.float64)) for part in _chunks(values.size))
    mean = total / values.size
    squares = 0.0
    for part in _chunks(values.size):
        centred = values[part].astype(np.float64) - mean
        squares += float(np.dot(centred, centred))
    return mean, float(np.sqrt(squares / values.size))


def _zscore(x: np.ndarray, mean: float, std: float) -> np.ndarray:
    """``(x - mean) / max(std, 1e-8)`` computed in float64 per chunk, stored as float32."""
    flat = x.reshape(-1)
    out = np.empty(flat.shape, dtype=np.float32)
    scale = max(std, STD_FLOOR)
    with np.errstate(over="ignore"):  # a result beyond float32 becomes Inf; preprocess_case reports it
        for part in _chunks(flat.size):
            out[part] = (flat[part].astype(np.float64) - mean) / scale
    return out.reshape(x.shape)


@NORMALIZERS.register("ZScoreNormalization")
def zscore_normalization(x: np.ndarray, foreground: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
    """Z-score with the foreground's mean and std (std floored at 1e-8)."""
    mean, std = _foreground_stats(x, foreground)
    return _zscore(x, mean, std), {"mean": mean, "std": std}


@NORMALIZERS.register("CTNormalization")
def ct_normalization(x: np.ndarray, foreground: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
    """Clip to [-1000, 2000] HU, then z-score with the foreground's mean and std."""
    clipped = np.clip(x, *CT_WINDOW).astype(np.float32, copy=False)
    mean, std = _foreground_stats(clipped, foreground)
    return _zscore(clipped, mean, std), {"mean": mean, "std": std, "clip": list(CT_WINDOW)}


@NORMALIZERS.register("NoNormalization")
def no_normalization(x: np.ndarray, foreground: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
    """Only cast to float32."""
    return x.astype(np.float32, copy=False), {}


def normalize(data: np.ndarray, foreground: np.ndarray, scheme: str) -> tuple[np.ndarray, dict[str, Any]]:
    """Normalize every channel of ``data`` (C, X, Y, Z) with ``scheme``; returns data and per-channel stats."""
    fn = NORMALIZERS.get(scheme)
    out = np.empty(data.shape, dtype=np.float32)
    stats: list[dict[str, Any]] = []
    for c in range(data.shape[0]):
        out[c], channel_stats = fn(data[c], foreground)
        stats.append(channel_stats)
    return out, {"scheme": scheme, "channels": stats}
