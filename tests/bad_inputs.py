"""Builders of the bad input files nnssl must refuse (or repair) per case, shared by the tests and by
``benchmarks/hostile_inputs.py``. Each writes one file (two for an image with a mask) and returns its path."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk


def blob_volume(shape: tuple[int, int, int] = (20, 24, 28), seed: int = 0) -> np.ndarray:
    """A noisy ellipsoid (values around 100) on a zero background, (z, y, x) order."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    inside = (z**2 + y**2 + x**2) < 0.7
    return np.where(inside, 100 + 10 * rng.normal(size=shape), 0).astype(np.float32)


def write_nifti(path: Path, volume_zyx: np.ndarray, affine: np.ndarray | None = None) -> Path:
    """``volume_zyx`` stored as a NIfTI file in (x, y, z) order with ``affine`` (identity: 1 mm, RAS)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.ascontiguousarray(volume_zyx.transpose(2, 1, 0))
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), path)
    return path


def truncated_nifti(path: Path, fraction: float, dtype: type = np.int16) -> Path:
    """A valid ``.nii.gz`` / ``.nii`` cut to ``fraction`` of its bytes (an interrupted copy)."""
    write_nifti(path, blob_volume().astype(dtype))
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    return path


def truncated_mha(path: Path) -> Path:
    """A MetaImage cut to half of its bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(sitk.GetImageFromArray(blob_volume()), str(path))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def flipped_gzip_nifti(path: Path) -> Path:
    """A ``.nii.gz`` with one byte of its compressed data inverted (bit rot): its size is right, its CRC is not."""
    write_nifti(path, blob_volume(seed=5).astype(np.int16))
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    return path


def vector_mha(path: Path, components: int = 3) -> Path:
    """An RGB-like ``.mha`` with ``components`` values per voxel."""
    path.parent.mkdir(parents=True, exist_ok=True)
    values = np.stack([blob_volume(seed=s) for s in range(components)], axis=-1)
    sitk.WriteImage(sitk.GetImageFromArray(values, isVector=True), str(path))
    return path


def header_bomb(path: Path, side: int = 1500) -> Path:
    """A 151-byte ``.nii.gz``: a valid header claiming ``side``^3 int16 voxels, and no voxel data."""
    header = nib.Nifti1Header()
    header.set_data_shape((side, side, side))
    header.set_data_dtype(np.int16)
    header.set_qform(np.eye(4), code=1)
    header.set_sform(np.eye(4), code=1)
    header["vox_offset"] = 352
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(header.binaryblock + bytes(4)))
    return path


def sheared_nifti(path: Path) -> Path:
    """10 slices with a sheared sform (the y axis leans 0.4 mm per voxel towards x, 53 mm slice "spacing")."""
    affine = np.array([[1.0, 0.4, 0, 0], [0, 1.0, 0, 0], [0, 0, 53.0, 0], [0, 0, 0, 1]])
    image = nib.Nifti1Image(np.ascontiguousarray(blob_volume((10, 24, 28)).transpose(2, 1, 0)), affine)
    image.set_qform(None, code=0)
    image.set_sform(affine, code=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(image, path)
    return path


def float64_huge(path: Path, value: float = 1e300) -> Path:
    """A float64 image whose foreground holds ``value`` (beyond float32's 3.4e38)."""
    volume = blob_volume(seed=6).astype(np.float64)
    volume[volume > 0] = value
    return write_nifti(path, volume)


def near_float32_limit(path: Path) -> Path:
    """A float32 image with values of +-3e38 in its foreground (float32 z-score statistics overflow on it)."""
    volume = blob_volume(seed=7)
    volume[volume > 0] = np.float32(3e38)
    volume[10, 12, 14] = np.float32(-3e38)
    return write_nifti(path, volume)


def image_with_mask(image: Path, mask: Path, labels: tuple[int, ...] = (0, 255)) -> tuple[Path, Path]:
    """An image and an anatomy mask on its grid whose inside voxels carry ``labels[1:]`` (e.g. a 0/255 mask)."""
    volume = blob_volume(seed=8)
    write_nifti(image, volume)
    label_map = np.zeros(volume.shape, np.int16)
    inside = np.flatnonzero(volume > 0)
    for i, label in enumerate(labels[1:]):
        label_map.flat[inside[i :: len(labels) - 1]] = label
    write_nifti(mask, label_map)
    return image, mask
