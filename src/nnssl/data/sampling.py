"""Crop-first patch sampling from preprocessed blosc2 cases.

For each sample the spatial augmentation is drawn first (:func:`nnssl.transforms.spatial.draw_spatial_params`),
then only the voxels the patch needs are sliced from the lazily opened case (``case.data[lo:hi]``, one call per
array): exactly the patch when the sample is neither rotated nor scaled, otherwise the bounding box of the
rotated/scaled patch. Upstream read a fixed 257^3 region for every 160^3 sample (4.1x the voxels, 8.6 point 1).

Crop placement follows nnU-Net: along an axis where the volume is at least the patch, the patch lies inside
the volume; where it is smaller, the patch may overhang by up to half the missing size on either side and the
overhang is zero-padded, so small volumes still give full patches.

Anatomy-guided crops (``DataConfig.anatomy_crop_p``): with that probability the patch centre is a voxel with
``anatomy_mask == 1`` (inside the anatomy; upstream bug B2 drew centres outside it). The candidate voxels are
computed once per case (and cached per worker): the anatomy mask is read with a stride of
:data:`ANATOMY_STRIDE` voxels per axis (1/64 of the voxels at stride 4) and the foreground grid points are kept,
subsampled to at most :data:`MAX_ANATOMY_POINTS`. Each candidate is an exact voxel of the full-resolution mask
with value 1. The patch box is then clamped on both sides into the allowed range, which keeps the chosen voxel
inside the patch. A case without an anatomy mask, or with an empty one, falls back to a uniform crop.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from nnssl.config import DataConfig
from nnssl.transforms.spatial import (
    SpatialParams,
    draw_spatial_params,
    mirror,
    read_region,
    resample_patch,
    source_region,
)

logger = logging.getLogger(__name__)

ANATOMY_STRIDE = 4
MAX_ANATOMY_POINTS = 4096
MASK_KEYS = {"anatomy": "anatomy_mask", "anonymization": "anonymization_mask"}
# What a case without a stored mask gets, so that every batch has the same keys: no anatomy mask means
# "everything may be anatomy" (1), no anonymization mask means "nothing was removed" (0).
MASK_FILL = {"anatomy_mask": 1, "anonymization_mask": 0}


def crop_bounds(shape: Sequence[int], patch_size: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Inclusive range ``[lo, hi]`` of the patch's lower corner per axis (nnU-Net's overhang rule)."""
    shape = np.asarray(shape, dtype=int)
    patch = np.asarray(patch_size, dtype=int)
    need = np.maximum(patch - shape, 0)
    lo = -(need // 2)
    hi = shape + need // 2 + need % 2 - patch
    return lo, hi


def _open_case_default(path: str) -> Any:
    from nnssl.data.case_store import open_case

    return open_case(path)


class PatchSampler:
    """Draw augmented patches from a list of cases, reading only what each patch needs.

    ``paths`` are case stems or ``.b2nd`` paths, opened lazily with ``open_fn`` (default
    :func:`nnssl.data.case_store.open_case`) and kept in a small per-process LRU cache. A case is anything with
    ``.data`` (a (C, X, Y, Z) array-like supporting slicing), ``.masks`` (dict "anatomy"/"anonymization" ->
    (1, X, Y, Z) array-like) and ``.properties`` (dict). The sampler is picklable (the cache is not pickled), so
    it can be handed to DataLoader worker processes.

    ``augment=False`` disables rotation, scaling and mirroring (validation). ``data_order``/``mask_order`` are the
    interpolation orders for resampled images and masks (default ``data_cfg.interpolation_order`` and 0, which
    keeps masks binary).
    """

    def __init__(
        self,
        paths: Sequence[str | os.PathLike[str]],
        patch_size: Sequence[int],
        data_cfg: DataConfig,
        augment: bool = True,
        unique_ids: Sequence[str] | None = None,
        open_fn: Callable[[str], Any] | None = None,
        data_order: int | None = None,
        mask_order: int = 0,
        cache_size: int = 16,
    ) -> None:
        if len(paths) == 0:
            raise ValueError("PatchSampler needs at least one case; the image list is empty (check the split).")
        if unique_ids is not None and len(unique_ids) != len(paths):
            raise ValueError(f"Got {len(unique_ids)} unique ids for {len(paths)} cases.")
        self.paths = [str(p) for p in paths]
        self.unique_ids = list(unique_ids) if unique_ids is not None else None
        self.patch_size = tuple(int(p) for p in patch_size)
        self.cfg = data_cfg
        self.augment = augment
        self.open_fn = open_fn or _open_case_default
        self.data_order = data_cfg.interpolation_order if data_order is None else data_order
        self.mask_order = mask_order
        self.cache_size = cache_size
        self._cases: OrderedDict[int, Any] = OrderedDict()
        self._anatomy_points: OrderedDict[int, np.ndarray] = OrderedDict()

    def __len__(self) -> int:
        return len(self.paths)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_cases"] = OrderedDict()
        state["_anatomy_points"] = OrderedDict()
        return state

    def case(self, index: int) -> Any:
        """The opened case ``index`` (LRU-cached per process)."""
        if index in self._cases:
            self._cases.move_to_end(index)
            return self._cases[index]
        case = self.open_fn(self.paths[index])
        self._cases[index] = case
        while len(self._cases) > self.cache_size:
            self._cases.popitem(last=False)
        return case

    def anatomy_points(self, index: int) -> np.ndarray:
        """Up to :data:`MAX_ANATOMY_POINTS` voxel coordinates (N, 3) with anatomy mask 1 (cached per case)."""
        if index in self._anatomy_points:
            self._anatomy_points.move_to_end(index)
            return self._anatomy_points[index]
        mask = self.case(index).masks.get("anatomy")
        if mask is None:
            points = np.zeros((0, 3), dtype=np.int32)
        else:
            s = ANATOMY_STRIDE
            strided = np.asarray(mask[0:1, ::s, ::s, ::s])[0]
            points = (np.argwhere(strided == 1) * s).astype(np.int32)
            if len(points) > MAX_ANATOMY_POINTS:
                keep = np.random.default_rng(index).choice(len(points), MAX_ANATOMY_POINTS, replace=False)
                points = points[np.sort(keep)]
        self._anatomy_points[index] = points
        while len(self._anatomy_points) > 1024:
            self._anatomy_points.popitem(last=False)
        return points

    def draw_params(self, rng: np.random.Generator) -> SpatialParams:
        """The spatial augmentation of one sample (identity without ``augment``)."""
        if not self.augment:
            return SpatialParams()
        c = self.cfg
        return draw_spatial_params(rng, c.rotation_p, c.rotation_max_degrees, c.scale_p, c.scale_range, c.mirror_axes)

    def draw_corner(self, index: int, shape: Sequence[int], rng: np.random.Generator) -> np.ndarray:
        """Lower corner of the (unaugmented) patch box, anatomy-guided with p=``anatomy_crop_p``."""
        lo, hi = crop_bounds(shape, self.patch_size)
        if self.cfg.anatomy_crop_p > 0 and rng.random() < self.cfg.anatomy_crop_p:
            points = self.anatomy_points(index)
            if len(points):
                voxel = points[rng.integers(len(points))]
                return np.clip(voxel - np.asarray(self.patch_size) // 2, lo, hi)
        return np.array([rng.integers(a, b + 1) for a, b in zip(lo, hi)])

    def sample(self, index: int, rng: np.random.Generator) -> dict[str, Any]:
        """One sample of case ``index``: ``image`` float32 (C, *patch), masks int8 (1, *patch), ``unique_id``.

        Both mask keys are always present; a mask the case does not store is filled per :data:`MASK_FILL`.
        """
        case = self.case(index)
        params = self.draw_params(rng)
        corner = self.draw_corner(index, case.data.shape[1:], rng)
        centre = corner + (np.asarray(self.patch_size) - 1) / 2
        lo, hi = source_region(centre, self.patch_size, params)
        arrays = {"image": case.data}
        for kind, key in MASK_KEYS.items():
            if kind in case.masks:
                arrays[key] = case.masks[kind]
        out: dict[str, Any] = {}
        for key, array in arrays.items():
            region = read_region(array, lo, hi)
            if not params.is_identity_map:
                order = self.data_order if key == "image" else self.mask_order
                region = resample_patch(region, lo, centre, self.patch_size, params, order)
            region = mirror(region, params.mirror)
            out[key] = region.astype(np.float32 if key == "image" else np.int8, copy=False)
        for key, fill in MASK_FILL.items():
            if key not in out:
                out[key] = np.full((1, *self.patch_size), fill, dtype=np.int8)
        out["unique_id"] = self._unique_id(index, case)
        return out

    def _unique_id(self, index: int, case: Any) -> str:
        if self.unique_ids is not None:
            return self.unique_ids[index]
        props = getattr(case, "properties", None) or {}
        return str(props.get("unique_id", self.paths[index]))
