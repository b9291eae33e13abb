"""Crops ("views") of a sampled patch: random crops, overlapping pairs with relative boxes, overlap tables.

Arrays are numpy (C, X, Y, Z) (channels first, then the three spatial array axes); starts and sizes are
per spatial axis in the same order. Random draws use the ``rng`` passed in (a ``numpy.random.Generator``,
a ``RandomState``, or ``None`` for numpy's global generator, which the loader seeds per sample).

Overlapping pairs (CVA, methods.md 1.2 with the fixes of 1.7 items 3 and 6): per axis the overlap is
``o_d = int(round(p_d * f_d))`` voxels, crop 1 is the lower crop on every axis and
``start2 = start1 + (p_d - o_d)``, so crop 1's last ``o_d`` voxels are crop 2's first ``o_d`` voxels exactly.
``start1`` is uniform over the positions that keep both crops inside the base. The overlap region in each
crop's own [0, 1] coordinates, ordered by ARRAY AXIS ``(lo0, lo1, lo2, hi0, hi1, hi2)``, is
``box1 = ((p-o)/p, 1)`` and ``box2 = (0, o/p)`` per axis. A base too small for the requested overlap is a
``ValueError`` (never identical fallback crops).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

Rng = np.random.Generator | np.random.RandomState | None


def _randint(rng: Rng, low: int, high: int) -> int:
    """Uniform integer in [low, high] (inclusive) from ``rng`` (or numpy's global generator)."""
    if high < low:
        raise ValueError(f"empty range [{low}, {high}]")
    if rng is None:
        return int(np.random.randint(low, high + 1))
    if isinstance(rng, np.random.Generator):
        return int(rng.integers(low, high + 1))
    return int(rng.randint(low, high + 1))


def _as3(values: Sequence[int], what: str) -> tuple[int, int, int]:
    out = tuple(int(v) for v in values)
    if len(out) != 3:
        raise ValueError(f"{what} must have 3 spatial entries, got {list(values)}.")
    return out  # type: ignore[return-value]


def random_crop_start(base_shape: Sequence[int], crop_size: Sequence[int], rng: Rng = None) -> tuple[int, int, int]:
    """A uniformly random start such that a crop of ``crop_size`` lies inside ``base_shape`` (spatial)."""
    base, size = _as3(base_shape, "base_shape"), _as3(crop_size, "crop_size")
    if any(s > b for s, b in zip(size, base)):
        raise ValueError(f"Crop size {list(size)} does not fit into the patch {list(base)}; enlarge train.patch_size.")
    return tuple(_randint(rng, 0, b - s) for b, s in zip(base, size))  # type: ignore[return-value]


def crop(array: np.ndarray, start: Sequence[int], size: Sequence[int]) -> np.ndarray:
    """A copy of ``array[:, s0:s0+p0, s1:s1+p1, s2:s2+p2]`` (array (C, X, Y, Z)); out-of-bounds is an error."""
    start, size = _as3(start, "start"), _as3(size, "size")
    spatial = array.shape[1:]
    if any(s < 0 or s + p > n for s, p, n in zip(start, size, spatial)):
        raise ValueError(
            f"Crop start {list(start)} size {list(size)} leaves the array of spatial shape {list(spatial)}."
        )
    return array[:, start[0] : start[0] + size[0], start[1] : start[1] + size[1], start[2] : start[2] + size[2]].copy()


def partner_start(
    base_shape: Sequence[int], start: Sequence[int], crop_size: Sequence[int], max_shift: Sequence[int], rng: Rng = None
) -> tuple[int, int, int]:
    """A start whose offset from ``start`` is uniform in [-max_shift, max_shift] per axis, kept inside the base.

    Used by SimCLR (upstream ``simclr_transform``): with ``max_shift = floor((1 - min_overlap) * p)`` the
    partner overlaps the reference crop by at least ``min_overlap`` of the crop size on every axis.
    """
    base, start, size, shift = (
        _as3(v, n) for v, n in ((base_shape, "base"), (start, "start"), (crop_size, "size"), (max_shift, "max_shift"))
    )
    out = []
    for b, s, p, m in zip(base, start, size, shift):
        low, high = max(0, s - m), min(b - p, s + m)
        out.append(_randint(rng, low, high))
    return tuple(out)  # type: ignore[return-value]


def overlap_lengths(crop_size: Sequence[int], overlap_fractions: Sequence[float]) -> tuple[int, int, int]:
    """Per-axis overlap in voxels, ``o_d = int(round(p_d * f_d))``, checked to lie in [1, p_d]."""
    size = _as3(crop_size, "crop_size")
    fractions = tuple(float(f) for f in overlap_fractions)
    if len(fractions) != 3 or any(not 0.0 < f <= 1.0 for f in fractions):
        raise ValueError(f"overlap_fractions must be 3 values in (0, 1], got {list(overlap_fractions)}.")
    lengths = tuple(int(round(p * f)) for p, f in zip(size, fractions))
    if any(o < 1 for o in lengths):
        raise ValueError(f"Overlap fractions {list(fractions)} give an empty overlap for crop size {list(size)}.")
    return lengths  # type: ignore[return-value]


def overlapping_pair(
    base_shape: Sequence[int], crop_size: Sequence[int], overlap_fractions: Sequence[float], rng: Rng = None
) -> tuple[tuple[int, int, int], tuple[int, int, int], tuple[float, ...], tuple[float, ...]]:
    """Two crops of ``crop_size`` overlapping by ``overlap_fractions`` per axis: ``(start1, start2, box1, box2)``.

    See the module docstring for the geometry. Raises ValueError when ``base_shape`` is smaller than
    ``2 p - o`` on some axis (the pair would not fit).
    """
    base, size = _as3(base_shape, "base_shape"), _as3(crop_size, "crop_size")
    lengths = overlap_lengths(size, overlap_fractions)
    spans = [2 * p - o for p, o in zip(size, lengths)]
    too_small = [axis for axis, (b, span) in enumerate(zip(base, spans)) if span > b]
    if too_small:
        raise ValueError(
            f"The patch {list(base)} is too small for two crops of {list(size)} overlapping by {list(lengths)} voxels: "
            f"axes {too_small} need at least {[spans[a] for a in too_small]} voxels (2 * crop - overlap). "
            "Enlarge the sampled patch or raise the minimum overlap."
        )
    start1 = tuple(_randint(rng, 0, b - span) for b, span in zip(base, spans))
    start2 = tuple(s + p - o for s, p, o in zip(start1, size, lengths))
    box1 = tuple((p - o) / p for p, o in zip(size, lengths)) + (1.0, 1.0, 1.0)
    box2 = (0.0, 0.0, 0.0) + tuple(o / p for p, o in zip(size, lengths))
    return start1, start2, box1, box2  # type: ignore[return-value]


def overlap_fraction_matrix(
    target_starts: np.ndarray | Sequence[Sequence[int]],
    base_starts: np.ndarray | Sequence[Sequence[int]],
    size: Sequence[int],
) -> np.ndarray:
    """(T, B) float32: ``|target_t ∩ base_b| / prod(size)`` for equally sized boxes (VoCo labels).

    When the base boxes tile a region that contains every target, each row sums to 1.
    """
    targets = np.asarray(target_starts, dtype=np.int64).reshape(-1, 3)
    bases = np.asarray(base_starts, dtype=np.int64).reshape(-1, 3)
    p = np.asarray(_as3(size, "size"), dtype=np.int64)
    lo = np.maximum(targets[:, None, :], bases[None, :, :])
    hi = np.minimum(targets[:, None, :] + p, bases[None, :, :] + p)
    inter = np.clip(hi - lo, 0, None).prod(axis=-1)
    return (inter / float(p.prod())).astype(np.float32)


def grid_starts(region: Sequence[int], size: Sequence[int]) -> np.ndarray:
    """(n0*n1*n2, 3) starts of the non-overlapping tiles of ``size`` covering ``region`` (C order).

    Every side of ``region`` must be a multiple of the tile side.
    """
    region3, size3 = _as3(region, "region"), _as3(size, "size")
    if any(r % s for r, s in zip(region3, size3)):
        raise ValueError(f"The patch {list(region3)} is not a whole number of {list(size3)} tiles on every axis.")
    axes = [np.arange(0, r, s) for r, s in zip(region3, size3)]
    return np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)


def random_mirror_rot90(
    array: np.ndarray, mirror_axes: Sequence[int] = (0, 1, 2), rot90_plane: tuple[int, int] | None = (0, 1)
) -> np.ndarray:
    """A new array: each spatial axis in ``mirror_axes`` flipped with p=0.5, then ``k ~ U{0..3}`` quarter turns in
    ``rot90_plane`` (spatial axes; skipped when the two sides differ). Draws from numpy's global generator."""
    out = array
    for axis in mirror_axes:
        if np.random.uniform() < 0.5:
            out = np.flip(out, axis=1 + int(axis))
    if rot90_plane is not None:
        a, b = (1 + int(rot90_plane[0]), 1 + int(rot90_plane[1]))
        k = int(np.random.randint(0, 4))
        if out.shape[a] == out.shape[b] and k:
            out = np.rot90(out, k=k, axes=(a, b))
    return np.ascontiguousarray(out).copy() if np.shares_memory(out, array) else np.ascontiguousarray(out)
