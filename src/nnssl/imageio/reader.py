"""Public image reading: SimpleITK first, nibabel where SimpleITK refuses the file, one error type for callers.

:func:`read_header` reads only the header; :func:`read_image` and :func:`read_mask` return canonical arrays
(LPS-identity direction, (C, z, y, x) axes, see :mod:`nnssl.imageio.header`). Everything that goes wrong becomes an
:class:`ImageReadError` naming the file and, when both readers failed, both reasons.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from nnssl.imageio.header import ImageHeader, ImageReadError
from nnssl.imageio.nibabel_reader import read_canonical_nibabel, read_header_nibabel
from nnssl.imageio.simpleitk_reader import read_canonical_sitk, read_header_sitk

T = TypeVar("T")


def _short(err: BaseException) -> str:
    """The informative last line of an exception (SimpleITK prefixes its messages with build paths)."""
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    return f"{type(err).__name__}: {lines[-1] if lines else ''}"


def _with_fallback(path: str | os.PathLike[str], sitk_fn: Callable[[str], T], nib_fn: Callable[[str], T]) -> T:
    path = str(path)
    if not Path(path).is_file():
        raise ImageReadError(path, "the file does not exist (check image_path in pretrain_data.json).")
    try:
        return sitk_fn(path)
    except ImageReadError:
        raise
    except Exception as sitk_err:
        sitk_reason = _short(sitk_err)
    try:
        return nib_fn(path)
    except ImageReadError:
        raise
    except Exception as nib_err:
        raise ImageReadError(
            path, f"SimpleITK refused it ({sitk_reason}) and so did nibabel ({_short(nib_err)})."
        ) from nib_err


def _is_nifti(path: str | os.PathLike[str]) -> bool:
    return str(path).lower().endswith((".nii", ".nii.gz"))


def _is_float_nifti(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a NIfTI file with floating-point voxels.

    SimpleITK's NIfTI reader silently replaces NaN and Inf voxels with 0 (seen with SimpleITK 2.5), which would
    hide broken images; such files are therefore read with nibabel first, which keeps them, so that the
    preprocessing can reject the case with its reason.
    """
    if not _is_nifti(path):
        return False
    try:
        return np.dtype(read_header_nibabel(str(path)).dtype).kind == "f"
    except Exception:  # an unreadable header is reported by the normal reading path
        return False


def read_header(path: str | os.PathLike[str]) -> ImageHeader:
    """The header of one image (spacing, shape, channels, dtype, orientation) without reading its voxels.

    NIfTI headers are read with nibabel first (about 4x faster than SimpleITK's ``ReadImageInformation`` on
    ``.nii.gz``; both give the same canonical geometry), other formats with SimpleITK first.
    """
    if _is_nifti(path):
        return _with_fallback(path, read_header_nibabel, read_header_sitk)
    return _with_fallback(path, read_header_sitk, read_header_nibabel)


def read_image(path: str | os.PathLike[str]) -> tuple[np.ndarray, dict[str, Any]]:
    """The image as float32 (C, z, y, x) in canonical LPS orientation, and its properties.

    Float NIfTI files are read with nibabel first (see :func:`_is_float_nifti`), everything else with SimpleITK
    first; both give the same canonical array.

    properties: ``spacing`` (canonical axis order), ``original_spacing``, ``original_direction``, ``original_origin``,
    ``original_orientation``, ``original_shape`` (the file's own SimpleITK x, y, z order), ``canonical_origin``
    (LPS world position of voxel 0 after reorientation) and ``reader``.
    """
    if _is_float_nifti(path):
        array, properties = _with_fallback(path, read_canonical_nibabel, read_canonical_sitk)
    else:
        array, properties = _with_fallback(path, read_canonical_sitk, read_canonical_nibabel)
    if np.iscomplexobj(array):
        raise ImageReadError(str(path), f"complex voxel type {array.dtype} is not supported.")
    return array.astype(np.float32, copy=False), properties


def read_mask(path: str | os.PathLike[str]) -> tuple[np.ndarray, dict[str, Any]]:
    """A label mask as int8 (1, z, y, x) on the same canonical grid as :func:`read_image`, and its properties.

    Float masks are rounded to the nearest integer; labels outside the int8 range or several channels are an error.
    """
    array, properties = _with_fallback(path, read_canonical_sitk, read_canonical_nibabel)
    if array.shape[0] != 1:
        raise ImageReadError(str(path), f"a mask must have one channel, this file has {array.shape[0]}.")
    if array.dtype.kind == "f":
        if not np.all(np.isfinite(array)):
            raise ImageReadError(str(path), "the mask contains NaN or Inf values.")
        array = np.rint(array)
    if array.dtype.kind in "fiu" and array.size and (array.min() < -128 or array.max() > 127):
        raise ImageReadError(str(path), f"mask labels range {array.min()}..{array.max()} do not fit int8 (-128..127).")
    return array.astype(np.int8), properties
