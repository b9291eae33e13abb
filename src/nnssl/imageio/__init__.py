"""Reading 3D medical images into nnssl's canonical orientation.

``read_header`` (header only), ``read_image`` (float32 (C, z, y, x)), ``read_mask`` (int8 (1, z, y, x)),
``ImageHeader`` and ``ImageReadError``. SimpleITK reads first; nibabel takes over for files SimpleITK refuses.
Canonical orientation: direction identity in SimpleITK's LPS convention, array axes as ``GetArrayFromImage``.
Every read is screened first (``ReadPolicy``: size limit, declared channels, no shear; truncated or corrupt files
are refused), see :mod:`nnssl.imageio.policy` and :mod:`nnssl.imageio.integrity`.
"""

from nnssl.imageio.header import CANONICAL_ORIENTATION, ImageHeader, ImageReadError
from nnssl.imageio.policy import DEFAULT_MAX_VOXELS, ReadPolicy

_READER_FUNCTIONS = ("failure_reason", "read_header", "read_image", "read_mask")


def __getattr__(name: str):
    """The reader functions load SimpleITK and scipy: import them on first use (console scripts start fast)."""
    if name in _READER_FUNCTIONS:
        from nnssl.imageio import reader

        return getattr(reader, name)
    raise AttributeError(f"module 'nnssl.imageio' has no attribute '{name}'")


__all__ = [
    "CANONICAL_ORIENTATION",
    "DEFAULT_MAX_VOXELS",
    "ImageHeader",
    "ImageReadError",
    "ReadPolicy",
    "failure_reason",
    "read_header",
    "read_image",
    "read_mask",
]
