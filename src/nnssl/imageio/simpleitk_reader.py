"""SimpleITK reader: header-only reads (``ImageFileReader.ReadImageInformation``) and full reads reoriented with
``sitk.DICOMOrient(image, "LPS")`` to the canonical orientation (see :mod:`nnssl.imageio.header`).

SimpleITK's own exceptions (unknown format, non-orthonormal direction cosines, truncated file) propagate as
``RuntimeError`` so that :mod:`nnssl.imageio.reader` can try nibabel; problems with the image itself (4D with several
volumes, 2D) raise :class:`ImageReadError` at once.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import SimpleITK as sitk

from nnssl.imageio.header import (
    CANONICAL_ORIENTATION,
    ImageHeader,
    ImageReadError,
    canonical_transform,
    orientation_code,
    ras_affine,
    to_canonical_order,
)

READER_NAME = "SimpleITK"

_DTYPES = {
    sitk.sitkUInt8: "uint8",
    sitk.sitkInt8: "int8",
    sitk.sitkUInt16: "uint16",
    sitk.sitkInt16: "int16",
    sitk.sitkUInt32: "uint32",
    sitk.sitkInt32: "int32",
    sitk.sitkUInt64: "uint64",
    sitk.sitkInt64: "int64",
    sitk.sitkFloat32: "float32",
    sitk.sitkFloat64: "float64",
    sitk.sitkVectorUInt8: "uint8",
    sitk.sitkVectorInt8: "int8",
    sitk.sitkVectorUInt16: "uint16",
    sitk.sitkVectorInt16: "int16",
    sitk.sitkVectorUInt32: "uint32",
    sitk.sitkVectorInt32: "int32",
    sitk.sitkVectorUInt64: "uint64",
    sitk.sitkVectorInt64: "int64",
    sitk.sitkVectorFloat32: "float32",
    sitk.sitkVectorFloat64: "float64",
}


def _spatial_geometry(
    path: str, dimension: int, size: tuple, spacing: tuple, direction: tuple, origin: tuple
) -> tuple[tuple, tuple, tuple, tuple]:
    """Size, spacing, 3x3 direction and origin of the spatial part; rejects what is not one 3D volume."""
    if dimension == 3:
        return tuple(size), tuple(spacing), tuple(direction), tuple(origin)
    if dimension == 4:
        if size[3] != 1:
            raise ImageReadError(
                path,
                f"4D image with {size[3]} volumes (size {list(size)}); nnssl pre-trains on single 3D volumes. "
                "Split the series into 3D files (one per volume) or remove it from pretrain_data.json.",
            )
        d4 = np.asarray(direction, dtype=float).reshape(4, 4)
        return tuple(size[:3]), tuple(spacing[:3]), tuple(d4[:3, :3].ravel()), tuple(origin[:3])
    raise ImageReadError(path, f"{dimension}D image (size {list(size)}); nnssl needs 3D volumes.")


def _open(path: str) -> sitk.ImageFileReader:
    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    reader.ReadImageInformation()
    return reader


def read_header_sitk(path: str) -> ImageHeader:
    """Header of ``path`` from SimpleITK without reading voxels."""
    reader = _open(path)
    size, spacing, direction, origin = _spatial_geometry(
        path, reader.GetDimension(), reader.GetSize(), reader.GetSpacing(), reader.GetDirection(), reader.GetOrigin()
    )
    affine = ras_affine(direction, spacing, origin)
    transform = canonical_transform(affine)
    pixel_id = reader.GetPixelID()
    return ImageHeader(
        path=path,
        spacing=tuple(float(s) for s in to_canonical_order(spacing, transform)),
        shape=tuple(int(s) for s in to_canonical_order(size, transform)),
        num_channels=int(reader.GetNumberOfComponents()),
        dtype=_DTYPES.get(pixel_id, sitk.GetPixelIDValueAsString(pixel_id)),
        orientation=orientation_code(affine),
        direction=tuple(float(d) for d in direction),
        origin=tuple(float(o) for o in origin),
        reader=READER_NAME,
    )


def _is_canonical(direction: tuple) -> bool:
    d = np.asarray(direction, dtype=float).reshape(3, 3)
    return bool(np.all(np.argmax(np.abs(d), axis=0) == [0, 1, 2]) and np.all(np.diag(d) > 0))


def read_canonical_sitk(path: str) -> tuple[np.ndarray, dict[str, Any]]:
    """Voxels of ``path`` as a (C, z, y, x) array in the file's dtype, reoriented to canonical LPS, and properties."""
    reader = _open(path)
    size, spacing, direction, origin = _spatial_geometry(
        path, reader.GetDimension(), reader.GetSize(), reader.GetSpacing(), reader.GetDirection(), reader.GetOrigin()
    )
    image = reader.Execute()
    if image.GetDimension() == 4:
        image = image[:, :, :, 0]
    canonical = sitk.DICOMOrient(image, CANONICAL_ORIENTATION)
    if not _is_canonical(canonical.GetDirection()):
        raise RuntimeError(
            f"SimpleITK {sitk.Version_VersionString()} DICOMOrient('LPS') gave direction {canonical.GetDirection()}"
        )
    array = sitk.GetArrayFromImage(canonical)
    array = np.moveaxis(array, -1, 0) if canonical.GetNumberOfComponentsPerPixel() > 1 else array[None]
    properties = {
        "spacing": [float(s) for s in reversed(canonical.GetSpacing())],
        "original_spacing": [float(s) for s in spacing],
        "original_direction": [float(d) for d in direction],
        "original_origin": [float(o) for o in origin],
        "original_orientation": orientation_code(ras_affine(direction, spacing, origin)),
        "original_shape": [int(s) for s in size],
        "canonical_origin": [float(o) for o in canonical.GetOrigin()],
        "reader": READER_NAME,
    }
    return np.ascontiguousarray(array), properties
