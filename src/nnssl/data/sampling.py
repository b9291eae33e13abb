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

What a sample carries: ``image`` and ``unique_id``, plus the masks named in ``masks`` (the method's
``batch_masks``) that the case stores; nothing else (upstream and earlier versions filled two constant 160^3 int8
masks into every sample). The collation fills a requested mask that some samples of a batch lack
(:data:`MASK_FILL`). Arrays may be views: a plain sample's image is the decoded block itself, mirrored as a
negative-stride view, so that the only copy is the one into the batch. The loader asks for ``lazy`` samples: a
plain sample then carries a :class:`PlainRead` per array, which the batch collation decodes straight into the
batch slot (no patch-sized array of its own, no copy when the box is inside the case and not mirrored).

Errors. Opening or decoding a case raises :class:`~nnssl.data.case_store.CaseReadError` naming the case's unique
id and file; the loader skips such cases (see :mod:`nnssl.data.loader`).
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import blosc2
import numpy as np

from nnssl.config import DataConfig
from nnssl.data.case_store import CaseReadError
from nnssl.transforms.spatial import (
    SpatialParams,
    affine_theta,
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
# What a requested mask is where a case does not store it: no anatomy mask means "everything may be anatomy" (1),
# no anonymization mask means "nothing was removed" (0).
MASK_FILL = {"anatomy_mask": 1, "anonymization_mask": 0}
DEFERRED_KEY = "_deferred_resampling"


@dataclass
class DeferredResampling:
    """A rotated/scaled sample whose resampling is left to the training device.

    ``regions`` maps batch keys ("image", mask keys) to the (C, *box) source regions, ``theta`` is the
    :func:`~nnssl.transforms.spatial.affine_theta` of the sample with its mirroring folded in.
    """

    regions: dict[str, np.ndarray]
    theta: np.ndarray


@dataclass
class PlainRead:
    """A plain (neither rotated nor scaled) array of a sample, decoded later straight into its batch slot.

    ``array`` is the case's (C, X, Y, Z) array-like, ``[lo, hi)`` the patch box (it may leave the volume) and
    ``flips`` the mirroring. :meth:`read_into` writes exactly what ``mirror(read_region(array, lo, hi), flips)``
    returns: the voxels inside the volume, zero outside. It exists only inside the process that assembles the batch.
    """

    sampler: PatchSampler
    index: int
    array: Any
    lo: tuple[int, int, int]
    hi: tuple[int, int, int]
    flips: tuple[bool, bool, bool]

    @property
    def shape(self) -> tuple[int, ...]:
        return (int(self.array.shape[0]), *hi_minus_lo(self.lo, self.hi))

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.array.dtype)

    def read_into(self, out: np.ndarray, scratch: Callable[[tuple[int, ...], np.dtype], np.ndarray]) -> None:
        """Decode the box into ``out`` (shape :attr:`shape`, any dtype); damaged data raise CaseReadError.

        Only the part of ``out`` outside the volume is zero-filled. A box inside the volume, unmirrored, of the
        stored dtype is decoded into ``out`` itself; otherwise the part inside the volume is decoded in slabs along
        X into ``scratch(shape, dtype)`` (a reused buffer) and each slab is copied, flipped and cast, into place.
        """
        shape = [int(s) for s in self.array.shape[1:]]
        inner_lo = [max(0, a) for a in self.lo]
        inner_hi = [min(s, b) for s, b in zip(shape, self.hi)]
        if any(b <= a for a, b in zip(inner_lo, inner_hi)):
            out.fill(0)
            return
        dst = []
        for axis, (a, b, o, p, flip) in enumerate(zip(inner_lo, inner_hi, self.lo, out.shape[1:], self.flips)):
            start, stop = (p - (b - o), p - (a - o)) if flip else (a - o, b - o)
            dst.append(slice(start, stop))
            if start > 0:
                out[(slice(None),) * (axis + 1) + (slice(0, start),)] = 0
            if stop < p:
                out[(slice(None),) * (axis + 1) + (slice(stop, p),)] = 0
        channels = int(self.array.shape[0])
        inside = inner_lo == list(self.lo) and inner_hi == list(self.hi)
        direct = inside and not any(self.flips) and out.dtype == self.dtype
        if direct and self._decode(out, (0, *inner_lo), (channels, *inner_hi)):
            return
        # slabs along X, aligned to the stored blocks: each is decoded into a cache-sized scratch buffer and copied
        # at once (2 CPU-ms less per 160^3 patch than decoding the box whole into memory and then copying it)
        step = _slab_side(self.array)
        x0, x1, o, p = inner_lo[0], inner_hi[0], self.lo[0], out.shape[1]
        cuts = [x0, *range((x0 // step + 1) * step, x1, step), x1]
        for a, b in zip(cuts[:-1], cuts[1:]):
            lo, hi = (0, a, *inner_lo[1:]), (channels, b, *inner_hi[1:])
            buffer = scratch((channels, *hi_minus_lo(lo[1:], hi[1:])), self.dtype)
            if not self._decode(buffer, lo, hi):
                buffer = self._decode(None, lo, hi)
            rows = slice(p - (b - o), p - (a - o)) if self.flips[0] else slice(a - o, b - o)
            np.copyto(out[(slice(None), rows, *dst[1:])], mirror(buffer, self.flips, copy=False), casting="unsafe")

    def _decode(self, out: np.ndarray | None, lo: Sequence[int], hi: Sequence[int]) -> Any:
        """``array[lo:hi]`` decoded into ``out`` (True; False where that is not possible), or returned (``out=None``).

        Damaged data raise :class:`~nnssl.data.case_store.CaseReadError` naming the case and the sample's box.
        """
        try:
            if out is None:
                return np.asarray(self.array[tuple(slice(u, v) for u, v in zip(lo, hi))])
            return _decode_into(self.array, out, lo, hi)
        except Exception as err:  # blosc2 reports damaged chunks as RuntimeError ("Error while getting the buffer")
            box_text = f"{list(self.lo)}..{list(self.hi)}"
            raise self.sampler._read_error(self.index, f"cannot be decoded in the box {box_text}", err) from err


def _slab_side(array: Any) -> int:
    """X side of the slabs a box is decoded in: the smallest multiple of the stored block side >= 32."""
    blocks = getattr(array, "blocks", None)
    side = int(blocks[1]) if blocks is not None and len(blocks) > 1 else 32
    return side * max(1, -(-32 // side))


# blosc2's own decoder into a given array (what ``NDArray.__getitem__`` calls after allocating its result); where a
# blosc2 version lacks it, boxes are decoded by slicing and copied (the per-sample path's cost, same voxels)
_GET_SLICE_INTO = getattr(getattr(getattr(blosc2, "blosc2_ext", None), "NDArray", None), "get_slice_numpy", None)


def _decode_into(array: Any, out: np.ndarray, start: Sequence[int], stop: Sequence[int]) -> bool:
    """Decode ``array[start:stop]`` of a blosc2 NDArray into the C-contiguous ``out``; False for other arrays."""
    if _GET_SLICE_INTO is None or not isinstance(array, blosc2.NDArray):
        return False
    if not out.flags.c_contiguous or out.dtype != array.dtype:
        return False
    _GET_SLICE_INTO(array, out, (tuple(start), tuple(stop)))
    return True


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
    keeps masks binary). ``masks`` are the batch mask keys to carry (:data:`MASK_KEYS` values), when stored.
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
        masks: Sequence[str] = (),
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
        unknown = sorted(set(masks) - set(MASK_KEYS.values()))
        if unknown:
            raise ValueError(f"Unknown batch mask(s) {unknown}; a method may ask for {sorted(MASK_KEYS.values())}.")
        self.masks = tuple(masks)
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
        """The opened case ``index`` (LRU-cached per process); failures raise :class:`CaseReadError`."""
        if index in self._cases:
            self._cases.move_to_end(index)
            return self._cases[index]
        try:
            case = self.open_fn(self.paths[index])
        except CaseReadError:
            raise
        except Exception as err:  # any failure to open makes the case unusable; say which case it is
            raise self._read_error(index, "cannot be opened", err) from err
        self._cases[index] = case
        while len(self._cases) > self.cache_size:
            self._cases.popitem(last=False)
        return case

    def _read_error(self, index: int, what: str, err: Exception) -> CaseReadError:
        uid = self.unique_ids[index] if self.unique_ids is not None else None
        if uid is None and index in self._cases:  # opened: its properties know the id
            uid = (getattr(self._cases[index], "properties", None) or {}).get("unique_id")
        name = f"case {uid} ({self.paths[index]})" if uid else f"case {self.paths[index]}"
        return CaseReadError(
            f"{name} {what}: {type(err).__name__}: {err}. List and redo damaged cases with "
            "nnssl_verify_dataset -d DATASET -c CONFIGURATION --redo.",
            self.paths[index],
            uid,
        )

    def _read(self, index: int, array: Any, lo: Sequence[int], hi: Sequence[int]) -> np.ndarray:
        try:
            return read_region(array, lo, hi)
        except Exception as err:  # blosc2 reports damaged chunks as RuntimeError ("Error while getting the buffer")
            raise self._read_error(index, f"cannot be decoded in the box {list(lo)}..{list(hi)}", err) from err

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
            try:
                strided = np.asarray(mask[0:1, ::s, ::s, ::s])[0]
            except Exception as err:  # a damaged mask file
                raise self._read_error(index, "has an anatomy mask that cannot be decoded", err) from err
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

    def sample(
        self, index: int, rng: np.random.Generator, defer_resampling: bool = False, lazy: bool = False
    ) -> dict[str, Any]:
        """One sample of case ``index``: ``image`` (C, *patch), the requested stored masks (1, *patch), ``unique_id``.

        The image has the stored dtype (float32, or float16 for half-precision stores) and masks are int8; arrays
        may be views (see the module docstring). With ``defer_resampling`` a rotated or scaled sample carries
        :data:`DEFERRED_KEY` (a :class:`DeferredResampling`) instead of its arrays, for the training device. With
        ``lazy`` a plain sample carries a :class:`PlainRead` per array instead, decoded when the batch is assembled
        (:class:`nnssl.data.loader.BatchCollator`); the random draws are the same either way.
        """
        case = self.case(index)
        params = self.draw_params(rng)
        corner = self.draw_corner(index, case.data.shape[1:], rng)
        centre = corner + (np.asarray(self.patch_size) - 1) / 2
        lo, hi = source_region(centre, self.patch_size, params)
        arrays = {"image": case.data}
        for kind, key in MASK_KEYS.items():
            if key in self.masks and kind in case.masks:
                arrays[key] = case.masks[kind]
        out: dict[str, Any] = {}
        if lazy and params.is_identity_map:
            box = (tuple(int(v) for v in lo), tuple(int(v) for v in hi))
            out.update({key: PlainRead(self, index, array, *box, params.mirror) for key, array in arrays.items()})
            out["unique_id"] = self.unique_id(index)
            return out
        regions = {key: self._read(index, array, lo, hi) for key, array in arrays.items()}
        if params.is_identity_map:
            out.update({key: mirror(region, params.mirror, copy=False) for key, region in regions.items()})
        elif defer_resampling:
            theta = affine_theta(hi_minus_lo(lo, hi), lo, centre, self.patch_size, params, fold_mirror=True)
            out[DEFERRED_KEY] = DeferredResampling(regions, theta)
        else:
            for key, region in regions.items():
                source = region.astype(np.float32, copy=False) if key == "image" else region
                order = self.data_order if key == "image" else self.mask_order
                out[key] = mirror(resample_patch(source, lo, centre, self.patch_size, params, order), params.mirror)
        out["unique_id"] = self.unique_id(index)
        return out

    def unique_id(self, index: int) -> str:
        """The unique id of case ``index`` (given, else the case's properties, else its path)."""
        if self.unique_ids is not None:
            return self.unique_ids[index]
        props = getattr(self.case(index), "properties", None) or {}
        return str(props.get("unique_id", self.paths[index]))


def hi_minus_lo(lo: Sequence[int], hi: Sequence[int]) -> tuple[int, ...]:
    """The shape of the half-open box ``[lo, hi)``."""
    return tuple(int(b) - int(a) for a, b in zip(lo, hi))
