"""nibabel reader, the fallback for files SimpleITK refuses (non-orthonormal or otherwise odd affines).

The voxel-to-RAS affine is turned into the LPS direction/spacing/origin that SimpleITK would report
(direction = diag(-1, -1, 1) @ A / |A columns|, spacing = |A columns|), and the array is reoriented with nibabel's
orientation transforms (``io_orientation`` -> ``ornt_transform`` -> ``apply_orientation``) to the same canonical LPS
orientation and (z, y, x) axis order as the SimpleITK reader, so both readers give the same array for the same file.
A sheared affine maps to its closest axis-aligned orientation; the screening (:mod:`nnssl.imageio.policy`) refuses
such files unless ``resample_sheared`` is asked for, in which case :func:`resample_sheared_image` first resamples
the voxels onto an axis-aligned grid covering the image (nibabel's ``vox2out_vox`` / ``resample_from_to``, scipy
``affine_transform``) with the column norms of the affine as spacing.
"""

from __future__ import annotations

from typing import Any

import nibabel as nib
import numpy as np
from nibabel import orientations
from nibabel.spatialimages import SpatialImage

from nnssl.imageio.header import (
    LPS_TO_RAS,
    ImageHeader,
    ImageReadError,
    canonical_transform,
    orientation_code,
    to_canonical_order,
)
from nnssl.imageio.policy import is_sheared

READER_NAME = "nibabel"
#: The ``reader`` of a header/properties whose image was resampled from a sheared affine.
RESAMPLED_READER_NAME = "nibabel, resampled from a sheared affine"


def _load(path: str) -> tuple[SpatialImage, tuple[int, int, int], int]:
    """The lazily loaded image, its spatial shape and its number of channels."""
    image = nib.load(path)
    if not isinstance(image, SpatialImage) or image.affine is None:
        raise RuntimeError(f"nibabel opened it as {type(image).__name__}, which has no voxel-to-world affine")
    shape = tuple(int(s) for s in image.shape)
    if len(shape) == 3:
        return image, shape, 1
    if len(shape) == 4:
        if shape[3] != 1:
            raise ImageReadError(
                path,
                f"4D image with {shape[3]} volumes (shape {list(shape)}); nnssl pre-trains on single 3D volumes. "
                "Split the series into 3D files (one per volume) or remove it from pretrain_data.json.",
            )
        return image, shape[:3], 1
    if len(shape) == 5 and shape[3] == 1:
        return image, shape[:3], shape[4]
    raise ImageReadError(path, f"image of shape {list(shape)} is not a 3D volume (optionally with channels).")


def _geometry(affine: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """LPS direction (3x3), spacing and origin of a voxel-to-RAS affine."""
    spacing = nib.affines.voxel_sizes(affine)
    if np.any(spacing <= 0) or not np.all(np.isfinite(affine)):
        raise RuntimeError(f"degenerate affine {affine.tolist()}")
    direction = LPS_TO_RAS @ affine[:3, :3] / spacing
    origin = LPS_TO_RAS @ affine[:3, 3]
    return direction, spacing, origin


def axis_aligned_grid(shape: tuple[int, int, int], affine: np.ndarray) -> tuple[tuple[int, int, int], np.ndarray]:
    """(shape, affine) of the axis-aligned (RAS) grid that covers a voxel grid, with the column norms as spacing."""
    from nibabel.processing import vox2out_vox

    out_shape, out_affine = vox2out_vox((shape, affine), nib.affines.voxel_sizes(affine))
    return tuple(int(s) for s in out_shape), np.asarray(out_affine, dtype=float)


def resample_sheared_image(path: str, image: SpatialImage, shape: tuple[int, int, int], order: int) -> SpatialImage:
    """``image`` resampled onto :func:`axis_aligned_grid`: cubic B-spline (``order`` 3, float32, outside filled with
    the image minimum) for images, nearest neighbour (``order`` 0, outside 0) for masks."""
    from nibabel.processing import resample_from_to

    data = np.asanyarray(image.dataobj).reshape(shape)
    if order > 0:
        data = data.astype(np.float32)
    fill = float(data.min()) if order > 0 and data.size else 0.0
    try:
        source = nib.Nifti1Image(data, image.affine)
        return resample_from_to(source, axis_aligned_grid(shape, image.affine), order=order, mode="constant", cval=fill)
    except Exception as err:  # scipy/nibabel errors become a per-case reason naming the file
        raise ImageReadError(path, f"resampling its sheared affine onto an axis-aligned grid failed: {err}") from err


def _sheared(affine: np.ndarray) -> bool:
    return is_sheared(affine[:3, :3] / nib.affines.voxel_sizes(affine))


def _resample_if_sheared(
    path: str, image: SpatialImage, shape: tuple[int, int, int], channels: int, order: int | None
) -> tuple[SpatialImage, tuple[int, int, int], str]:
    """``(image, shape, reader name)``, resampled onto an axis-aligned grid when ``order`` is given and the affine
    is sheared (one channel only)."""
    if order is None or not _sheared(image.affine):
        return image, shape, READER_NAME
    if channels != 1:
        raise ImageReadError(path, f"--resample_sheared handles one-channel images; this one has {channels}.")
    resampled = resample_sheared_image(path, image, shape, order)
    return resampled, tuple(int(s) for s in resampled.shape[:3]), RESAMPLED_READER_NAME


def read_header_nibabel(path: str, resample_sheared: bool = False) -> ImageHeader:
    """Header of ``path`` from nibabel without reading voxels; with ``resample_sheared`` a sheared image's header
    describes the axis-aligned grid :func:`read_canonical_nibabel` would resample it onto."""
    image, shape, channels = _load(path)
    affine, reader = image.affine, READER_NAME
    if resample_sheared and _sheared(affine):
        shape, affine = axis_aligned_grid(shape, affine)
        reader = RESAMPLED_READER_NAME
    direction, spacing, origin = _geometry(affine)
    transform = canonical_transform(affine)
    return ImageHeader(
        path=path,
        spacing=tuple(float(s) for s in to_canonical_order(spacing, transform)),
        shape=tuple(int(s) for s in to_canonical_order(shape, transform)),
        num_channels=channels,
        dtype=image.get_data_dtype().newbyteorder("=").name,
        orientation=orientation_code(affine),
        direction=tuple(float(d) for d in direction.ravel()),
        origin=tuple(float(o) for o in origin),
        reader=reader,
    )


def read_canonical_nibabel(path: str, resample_order: int | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """Voxels of ``path`` as a (C, z, y, x) array in the file's dtype, reoriented to canonical LPS, and properties.

    ``resample_order`` (3 for images, 0 for masks) resamples a sheared image onto its axis-aligned grid first
    (:func:`resample_sheared_image`); ``properties["sheared_affine"]`` then keeps the file's own affine.
    """
    image, shape, channels = _load(path)
    file_affine = image.affine
    image, shape, reader = _resample_if_sheared(path, image, shape, channels, resample_order)
    direction, spacing, origin = _geometry(image.affine)
    transform = canonical_transform(image.affine)
    data = np.asanyarray(image.dataobj).reshape(*shape, channels)
    data = data.astype(data.dtype.newbyteorder("="), copy=False)
    data = orientations.apply_orientation(data, transform)
    array = np.ascontiguousarray(np.transpose(data, (3, 2, 1, 0)))
    canonical_affine = image.affine @ orientations.inv_ornt_aff(transform, shape)
    properties = {
        "spacing": [float(s) for s in to_canonical_order(spacing, transform)],
        "original_spacing": [float(s) for s in spacing],
        "original_direction": [float(d) for d in direction.ravel()],
        "original_origin": [float(o) for o in origin],
        "original_orientation": orientation_code(image.affine),
        "original_shape": list(shape),
        "canonical_origin": [float(o) for o in LPS_TO_RAS @ canonical_affine[:3, 3]],
        "reader": reader,
    }
    if reader == RESAMPLED_READER_NAME:
        properties["sheared_affine"] = [[float(v) for v in row] for row in file_affine]
    return array, properties
