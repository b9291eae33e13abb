"""Intensity normalization schemes, registered by upstream's names in :data:`NORMALIZERS`.

Each scheme maps one channel ``x`` (the image cropped to its nonzero box), its foreground mask (the nonzero
region, holes filled) and the plan's ``use_mask_for_norm`` flag for that channel to ``(x_normalized, stats)``:

- ``ZScoreNormalization`` (nnU-Net's and upstream nnssl's definition):
  ``use_mask_for_norm=False`` (the default): ``(x - mu) / max(sigma, 1e-8)`` with mu, sigma over the whole cropped
  volume, background zeros included; ``use_mask_for_norm=True``: mu, sigma over the foreground, applied to the
  foreground, background set to 0.
  mu, sigma and the map are computed in float64 (chunk by chunk), so values near float32's limit do not overflow.
- ``CTNormalization``: clip to the Hounsfield window [-1000, 2000], then z-score as above.
- ``NoNormalization``: cast to float32.

nnU-Net's pre-trained fine-tuning (``nnUNetv2_preprocess_like_nnssl``) z-scores every channel with
``ZScoreNormalization`` and the ``use_mask_for_norm`` of the downstream plan (False unless cropping to the
nonzero region shrinks the images by a quarter or more), so the default plan matches it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from nnssl.registry import Registry

Normalizer = Callable[[np.ndarray, np.ndarray, bool], tuple[np.ndarray, dict[str, Any]]]
NORMALIZERS: Registry[Normalizer] = Registry("normalization scheme")

STD_FLOOR = 1e-8
#: voxels per chunk of the float64 statistics and z-score (8 MiB of float64)
CHUNK = 1 << 20
CT_WINDOW = (-1000.0, 2000.0)


def _chunks(n: int) -> list[slice]:
    return [slice(start, min(start + CHUNK, n)) for start in range(0, n, CHUNK)]


def _stats(values: np.ndarray) -> tuple[float, float]:
    """Mean and std of ``values`` accumulated in float64, chunk by chunk.

    Float32 arithmetic overflows for values near its limit (3.4e38: ``x - mean`` or its square becomes Inf);
    float64 holds the squares of any float32 value. Work is done in chunks of :data:`CHUNK` voxels, so the extra
    memory is one float64 chunk, not a float64 copy of the volume.
    """
    values = values.ravel()
    if values.size == 0:
        return 0.0, 0.0
    total = sum(float(np.sum(values[part], dtype=np.float64)) for part in _chunks(values.size))
    mean = total / values.size
    squares = 0.0
    for part in _chunks(values.size):
        centred = values[part].astype(np.float64) - mean
        squares += float(np.dot(centred, centred))
    return mean, float(np.sqrt(squares / values.size))


def _zscore(x: np.ndarray, foreground: np.ndarray, use_mask: bool) -> tuple[np.ndarray, dict[str, Any]]:
    """``(x - mean) / max(std, 1e-8)`` in float64 per chunk, stored as float32; statistics over the whole volume,
    or over the foreground with ``use_mask`` (background then set to 0)."""
    masked = use_mask and bool(foreground.any())
    mean, std = _stats(x[foreground] if masked else x)
    flat = x.reshape(-1)
    out = np.empty(flat.shape, dtype=np.float32)
    scale = max(std, STD_FLOOR)
    with np.errstate(over="ignore"):  # a result beyond float32 becomes Inf; preprocess_case reports it
        for part in _chunks(flat.size):
            out[part] = (flat[part].astype(np.float64) - mean) / scale
    out = out.reshape(x.shape)
    if masked:
        out[~foreground] = 0.0
    return out, {"mean": mean, "std": std}


@NORMALIZERS.register("ZScoreNormalization")
def zscore_normalization(x: np.ndarray, foreground: np.ndarray, use_mask: bool = False) -> tuple[np.ndarray, dict]:
    """Z-score with the whole volume's (or, with ``use_mask``, the foreground's) mean and std (floored at 1e-8)."""
    return _zscore(x, foreground, use_mask)


@NORMALIZERS.register("CTNormalization")
def ct_normalization(x: np.ndarray, foreground: np.ndarray, use_mask: bool = False) -> tuple[np.ndarray, dict]:
    """Clip to [-1000, 2000] HU, then z-score as :func:`zscore_normalization`."""
    out, stats = _zscore(np.clip(x, *CT_WINDOW).astype(np.float32, copy=False), foreground, use_mask)
    return out, {**stats, "clip": list(CT_WINDOW)}


@NORMALIZERS.register("NoNormalization")
def no_normalization(x: np.ndarray, foreground: np.ndarray, use_mask: bool = False) -> tuple[np.ndarray, dict]:
    """Only cast to float32."""
    return x.astype(np.float32, copy=False), {}


def normalize(
    data: np.ndarray, foreground: np.ndarray, scheme: str, use_mask_for_norm: bool | Sequence[bool] = False
) -> tuple[np.ndarray, dict[str, Any]]:
    """Normalize every channel of ``data`` (C, X, Y, Z) with ``scheme``; returns data and per-channel stats.

    ``use_mask_for_norm`` is one flag for every channel or one per channel (the plan's list; the last entry
    repeats for further channels).
    """
    fn = NORMALIZERS.get(scheme)
    flags = [bool(use_mask_for_norm)] if isinstance(use_mask_for_norm, (bool, np.bool_)) else list(use_mask_for_norm)
    flags = flags or [False]
    out = np.empty(data.shape, dtype=np.float32)
    stats: list[dict[str, Any]] = []
    used: list[bool] = []
    for c in range(data.shape[0]):
        use_mask = bool(flags[min(c, len(flags) - 1)])
        out[c], channel_stats = fn(data[c], foreground, use_mask)
        stats.append(channel_stats)
        used.append(use_mask)
    return out, {"scheme": scheme, "use_mask_for_norm": used, "channels": stats}
