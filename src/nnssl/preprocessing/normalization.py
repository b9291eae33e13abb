"""Intensity normalization schemes, registered by upstream's names in :data:`NORMALIZERS`.

Each scheme maps one channel ``x`` and its foreground mask to ``(x_normalized, stats)``:

- ``ZScoreNormalization``: ``(x - mu) / max(sigma, 1e-8)`` with mu, sigma computed over the foreground only and
  applied to every voxel (upstream computed them over the whole cropped box, background zeros included).
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
CT_WINDOW = (-1000.0, 2000.0)


def _foreground_stats(x: np.ndarray, foreground: np.ndarray) -> tuple[float, float]:
    values = x[foreground] if foreground.any() else x.ravel()
    mean = float(np.mean(values, dtype=np.float64))
    centred = values.astype(np.float32, copy=False) - np.float32(mean)
    std = float(np.sqrt(np.mean(np.square(centred), dtype=np.float64)))
    return mean, std


def _zscore(x: np.ndarray, mean: float, std: float) -> np.ndarray:
    out = x.astype(np.float32, copy=True)
    out -= np.float32(mean)
    out /= np.float32(max(std, STD_FLOOR))
    return out


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
