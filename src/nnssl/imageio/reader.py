"""Public image reading: SimpleITK first, nibabel where SimpleITK refuses the file, one error type for callers.

:func:`read_header` reads only the header; :func:`read_image` and :func:`read_mask` return canonical arrays
(LPS-identity direction, (C, z, y, x) axes, see :mod:`nnssl.imageio.header`). Everything that goes wrong becomes an
:class:`ImageReadError` naming the file and, when both readers failed, both reasons (each with its reader's name).

Before any voxel is read, every image is screened (:func:`screen`): the header must meet the
:class:`~nnssl.imageio.policy.ReadPolicy` (size limit, declared channels, no shear unless it asks for resampling)
and the file must hold the data its header promises (:mod:`nnssl.imageio.integrity`). Both the fingerprint
(header-only) and the preprocessing (full read) go through it, so a file refused by one is refused by the other,
with the same reason.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from nnssl.imageio import nibabel_reader, simpleitk_reader
from nnssl.imageio.header import ImageHeader, ImageReadError
from nnssl.imageio.integrity import check_file_complete
from nnssl.imageio.policy import ReadPolicy, check_header, is_sheared

T = TypeVar("T")

FLOAT32_MAX = float(np.finfo(np.float32).max)
_SITK = simpleitk_reader.READER_NAME
_NIB = nibabel_reader.READER_NAME
_HEADER_READERS = {_SITK: simpleitk_reader.read_header_sitk, _NIB: nibabel_reader.read_header_nibabel}
_VOXEL_READERS = {_SITK: simpleitk_reader.read_canonical_sitk, _NIB: nibabel_reader.read_canonical_nibabel}


def _short(err: BaseException) -> str:
    """The informative last line of an exception (SimpleITK prefixes its messages with build paths)."""
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    return f"{type(err).__name__}: {lines[-1] if lines else ''}"


def _with_fallback(path: str, readers: dict[str, Callable[[str], T]], order: Sequence[str]) -> T:
    """``readers[order[0]](path)``, then the next reader if it raises; both failing names both, in order."""
    if not Path(path).is_file():
        raise ImageReadError(path, "the file does not exist.")
    reasons = []
    for name in order:
        try:
            return readers[name](path)
        except ImageReadError:
            raise
        except Exception as err:
            reasons.append((name, _short(err)))
    (first, first_reason), (second, second_reason) = reasons
    raise ImageReadError(path, f"{first} refused it ({first_reason}) and so did {second} ({second_reason}).")


def _is_nifti(path: str | os.PathLike[str]) -> bool:
    return str(path).lower().endswith((".nii", ".nii.gz"))


def _header_order(path: str) -> tuple[str, str]:
    """NIfTI headers: nibabel first (about 4x faster than SimpleITK's ``ReadImageInformation`` on ``.nii.gz``;
    both give the same canonical geometry); other formats: SimpleITK first."""
    return (_NIB, _SITK) if _is_nifti(path) else (_SITK, _NIB)


def screen(path: str | os.PathLike[str], policy: ReadPolicy | None = None, thorough: bool = False) -> ImageHeader:
    """The header of ``path`` after checking it against ``policy`` and checking that the file is complete.

    ``thorough`` verifies compressed data in full (its CRC), as done before reading voxels; without it a cheap
    size check is used (see :mod:`nnssl.imageio.integrity`). Raises :class:`ImageReadError` with the reason.
    """
    path = str(path)
    policy = policy or ReadPolicy()
    header = _with_fallback(path, _HEADER_READERS, _header_order(path))
    check_header(header, policy)
    check_file_complete(path, thorough=thorough)
    if policy.resample_sheared and is_sheared(header.direction):  # allowed by check_header: describe the new grid
        if not _is_nifti(path):
            raise ImageReadError(
                path,
                "its affine is sheared and --resample_sheared handles NIfTI files only. Convert it to NIfTI or "
                "resample it onto an orthogonal grid yourself, or remove it from pretrain_data.json.",
            )
        header = nibabel_reader.read_header_nibabel(path, resample_sheared=True)
    return header


def read_header(path: str | os.PathLike[str], policy: ReadPolicy | None = None) -> ImageHeader:
    """The header of one image (spacing, shape, channels, dtype, orientation) without reading its voxels.

    The file is screened (:func:`screen`, quick integrity check): an image that :func:`read_image` would refuse
    for its header or a truncated file is refused here too.
    """
    return screen(path, policy, thorough=False)


def _voxel_order(path: str, header: ImageHeader) -> tuple[str, str]:
    """Float NIfTI files: nibabel first. SimpleITK's NIfTI reader silently replaces NaN and Inf voxels with 0
    (seen with SimpleITK 2.5), which would hide broken images; nibabel keeps them, so that the preprocessing can
    reject the case with its reason. Everything else: SimpleITK first."""
    if _is_nifti(path) and np.dtype(header.dtype).kind == "f":
        return (_NIB, _SITK)
    return (_SITK, _NIB)


def _read_voxels(path: str, header: ImageHeader, resample_order: int = 3) -> tuple[np.ndarray, dict[str, Any]]:
    """The canonical voxels; a header of a sheared image that the policy lets through is resampled on reading
    (``resample_order`` 3 for images, 0 for masks)."""
    if header.reader == nibabel_reader.RESAMPLED_READER_NAME:
        array, properties = nibabel_reader.read_canonical_nibabel(path, resample_order=resample_order)
    else:
        array, properties = _with_fallback(path, _VOXEL_READERS, _voxel_order(path, header))
    if np.iscomplexobj(array):
        raise ImageReadError(path, f"complex voxel type {array.dtype} is not supported.")
    return array, properties


def _check_fits_float32(path: str, array: np.ndarray) -> None:
    """Values beyond float32's range would become +-Inf when cast; name the real problem instead."""
    if array.dtype.kind != "f" or array.dtype.itemsize <= 4 or not array.size:
        return
    largest = float(np.max(np.abs(array), where=np.isfinite(array), initial=0.0))
    if largest > FLOAT32_MAX:
        raise ImageReadError(
            path,
            f"voxel values reach {largest:.3g} in magnitude, beyond the float32 range (+-{FLOAT32_MAX:.3g}) in "
            f"which nnssl stores images ({array.dtype} file). Rescale the image (e.g. to its physical units) or "
            "remove it from pretrain_data.json.",
        )


def read_image(path: str | os.PathLike[str], policy: ReadPolicy | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """The image as float32 (C, z, y, x) in canonical LPS orientation, and its properties.

    The file is screened first (:func:`screen` with the thorough integrity check). Float NIfTI files are read
    with nibabel first (see :func:`_voxel_order`), everything else with SimpleITK first; both give the same
    canonical array. Float64 values beyond float32's range are refused with their magnitude.

    properties: ``spacing`` (canonical axis order), ``original_spacing``, ``original_direction``, ``original_origin``,
    ``original_orientation``, ``original_shape`` (the file's own SimpleITK x, y, z order), ``canonical_origin``
    (LPS world position of voxel 0 after reorientation) and ``reader``.
    """
    path = str(path)
    array, properties = _read_voxels(path, screen(path, policy, thorough=True))
    _check_fits_float32(path, array)
    return array.astype(np.float32, copy=False), properties


def read_mask(
    path: str | os.PathLike[str], policy: ReadPolicy | None = None, binary: bool = False
) -> tuple[np.ndarray, dict[str, Any]]:
    """A label mask as int8 (1, z, y, x) on the same grid as :func:`read_image`, and its properties.

    Float masks are rounded to the nearest integer first. With ``binary`` (anatomy and anonymization masks) every
    label > 0 becomes 1 (a 0/255 mask or a tissue label map means "inside" wherever it is nonzero) and negative
    labels are refused; otherwise labels outside the int8 range are refused. Several channels are an error.
    ``properties["label_range"]`` is the [min, max] label of the file. The file is screened like an image
    (``policy``'s size limit; one channel).
    """
    path = str(path)
    policy = policy or ReadPolicy()
    mask_policy = ReadPolicy(max_voxels=policy.max_voxels, num_channels=None, resample_sheared=policy.resample_sheared)
    header = screen(path, mask_policy, thorough=True)
    if header.num_channels != 1:
        raise ImageReadError(path, f"a mask must have one channel, this file has {header.num_channels}.")
    array, properties = _read_voxels(path, header, resample_order=0)
    if array.dtype.kind == "f":
        if not np.all(np.isfinite(array)):
            raise ImageReadError(path, "the mask contains NaN or Inf values.")
        array = np.rint(array)
    low, high = (array.min().item(), array.max().item()) if array.size else (0, 0)
    properties["label_range"] = [low, high]
    if binary:
        if low < 0:
            raise ImageReadError(
                path,
                f"the mask has negative labels (range {low}..{high}); a binary mask holds 0 (outside) and "
                "positive labels (inside). Fix the mask or remove it from pretrain_data.json.",
            )
        return (array > 0).astype(np.int8), properties
    if low < -128 or high > 127:
        raise ImageReadError(path, f"mask labels range {low}..{high} do not fit int8 (-128..127).")
    return array.astype(np.int8), properties


def failure_reason(err: BaseException, field: str = "image_path") -> str:
    """The reason to record when reading the file named by ``field`` of a ``pretrain_data.json`` image failed.

    ``field`` is the image entry's key (``image_path``, ``associated_masks.anatomy_mask``, ...). A missing file
    gets the key to fix; a mask's reason says which mask it is.
    """
    reason = err.reason if isinstance(err, ImageReadError) else f"{type(err).__name__}: {err}"
    if isinstance(err, ImageReadError) and not Path(err.path).exists():
        reason = f"{reason.rstrip('.')}: fix {field} in pretrain_data.json."
    if field != "image_path":
        reason = f"{field.rpartition('.')[2].replace('_', ' ')} {getattr(err, 'path', '')}: {reason}"
    return reason
