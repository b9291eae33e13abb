"""What nnssl refuses to read, decided from the header before any voxel is read (:func:`check_header`).

* **Size.** A header that implies more than ``max_voxels`` voxels (all channels) is refused: a 151-byte
  ``.nii.gz`` can claim 1500^3 voxels and would otherwise make a worker allocate 13.5 GB before failing. The
  default, :data:`DEFAULT_MAX_VOXELS` = 1024^3 (4 GiB as float32), is above any CT or MRI volume we know of
  (512 x 512 x 2000 is 0.5 x 1024^3); raise it with ``--max_voxels`` for larger real images.
* **Channels.** An image with more channels per voxel than its collection entry declares
  (``image_info["num_channels"]``, default 1) is refused: an RGB or vector ``.mha`` stored as a (3, X, Y, Z) case
  crashes training later without naming the case.
* **Shear.** An affine whose axes are not orthogonal (|D^T D - I| > :data:`SHEAR_TOLERANCE` for the direction
  matrix D of unit columns, i.e. axes more than ~0.06 degrees from perpendicular) is refused: mapping it to the
  closest axis-aligned orientation would drop the shear and use the column norms as spacings, a geometrically
  wrong image (a 10-slice file with 53 mm "spacing" became 531 slices). With ``resample_sheared`` (the
  ``--resample_sheared`` flag of the preprocessing commands) a sheared NIfTI file is instead resampled onto an
  axis-aligned grid that covers it, with the column norms of its affine as spacing (cubic B-spline for images,
  nearest neighbour for masks; :func:`nnssl.imageio.nibabel_reader.resample_sheared_image`).

:class:`ReadPolicy` carries the settings from the command line down to the worker processes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nnssl.imageio.header import ImageHeader, ImageReadError

DEFAULT_MAX_VOXELS = 1024**3
SHEAR_TOLERANCE = 1e-3


@dataclass(frozen=True)
class ReadPolicy:
    """Limits one image must meet before its voxels are read.

    ``max_voxels``: largest number of voxels (spatial voxels x channels) an image may have.
    ``num_channels``: channels per voxel the image is declared to have (``image_info["num_channels"]``); None
    leaves the count to the caller (masks check for exactly one themselves). ``resample_sheared``: resample a
    sheared NIfTI image onto an axis-aligned grid instead of refusing it.
    """

    max_voxels: int = DEFAULT_MAX_VOXELS
    num_channels: int | None = 1
    resample_sheared: bool = False

    def __post_init__(self) -> None:
        if int(self.max_voxels) < 1:
            raise ValueError(f"max_voxels must be >= 1, got {self.max_voxels}.")
        if self.num_channels is not None and int(self.num_channels) < 1:
            raise ValueError(f"num_channels must be >= 1, got {self.num_channels}.")


def shear(direction: tuple[float, ...] | np.ndarray) -> float:
    """max |D^T D - I| of the 3x3 direction matrix (columns normalised): 0 for orthonormal axes."""
    d = np.asarray(direction, dtype=float).reshape(3, 3)
    d = d / np.linalg.norm(d, axis=0, keepdims=True)
    return float(np.abs(d.T @ d - np.eye(3)).max())


def is_sheared(direction: tuple[float, ...] | np.ndarray) -> bool:
    """True when the voxel axes are further from perpendicular than :data:`SHEAR_TOLERANCE` allows."""
    return shear(direction) > SHEAR_TOLERANCE


def _axis_angles(direction: tuple[float, ...]) -> str:
    d = np.asarray(direction, dtype=float).reshape(3, 3)
    d = d / np.linalg.norm(d, axis=0, keepdims=True)
    pairs = ((0, 1), (0, 2), (1, 2))
    angles = [float(np.degrees(np.arccos(np.clip(d[:, i] @ d[:, j], -1, 1)))) for i, j in pairs]
    return ", ".join(f"{'xyz'[i]}-{'xyz'[j]} {a:.2f}" for (i, j), a in zip(pairs, angles))


def check_header(header: ImageHeader, policy: ReadPolicy) -> None:
    """Raise :class:`ImageReadError` (naming the file and the fix) if ``header`` breaks ``policy``."""
    voxels = int(np.prod(header.shape, dtype=np.int64)) * int(header.num_channels)
    if voxels > policy.max_voxels:
        raise ImageReadError(
            header.path,
            f"its header claims {' x '.join(str(s) for s in header.shape)} voxels x {header.num_channels} "
            f"channel(s) = {voxels:,} voxels ({voxels * 4 / 2**30:.2f} GiB as float32), more than the limit of "
            f"{policy.max_voxels:,} voxels. A broken or hostile header is the usual cause; if the image is real, "
            "raise the limit with --max_voxels (or ReadPolicy(max_voxels=...)).",
        )
    if policy.num_channels is not None and header.num_channels > policy.num_channels:
        raise ImageReadError(
            header.path,
            f"the image has {header.num_channels} channels per voxel (e.g. an RGB or vector image) but its "
            f"collection entry declares {policy.num_channels}. Split the channels into separate 3D images, or, if "
            f"multi-channel input is meant, declare it in pretrain_data.json: "
            f'"image_info": {{"num_channels": {header.num_channels}}}.',
        )
    if is_sheared(header.direction) and not policy.resample_sheared:
        raise ImageReadError(
            header.path,
            f"its affine is sheared (angles between the voxel axes: {_axis_angles(header.direction)} degrees "
            f"instead of 90). nnssl will not reorient it by dropping the shear, which would distort the anatomy "
            "and misstate the spacing. Let nnssl resample it onto an axis-aligned grid (--resample_sheared, NIfTI "
            "files), resample it yourself (e.g. nibabel.processing.resample_to_output, ANTs, FSL), or remove it "
            "from pretrain_data.json.",
        )
