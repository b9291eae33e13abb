"""Is an image file complete? Truncated and corrupt files are refused before any reader sees them.

SimpleITK's NIfTI reader fills the missing part of a truncated ``.nii`` / ``.nii.gz`` with zeros and reports
success (SimpleITK 2.5), so a cut download would become a valid-looking case. MetaImage files are refused by
SimpleITK, but with a misleading reason ("No such file or directory"). This module compares what the header
promises with what the file holds:

* ``.nii``: the file must hold ``vox_offset + prod(shape) * itemsize`` bytes.
* ``.nii.gz``: the gzip trailer stores the uncompressed size modulo 2^32 (ISIZE). The quick check
  (``thorough=False``, used for header-only reads such as the fingerprint) accepts a file whose ISIZE equals the
  size the header implies and decompresses the stream otherwise (a truncated file's last four bytes are
  compressed data, so they match with probability 2^-32). The thorough check (``thorough=True``, used before
  reading voxels) always decompresses the whole stream, which also verifies the CRC-32 of the data, so flipped
  bytes are found too. Both stream in 1 MiB pieces: memory stays flat whatever the file claims.
* ``.mha`` / ``.mhd``: the text header's ``DimSize``, ``ElementType`` and ``ElementNumberOfChannels`` (or
  ``CompressedDataSize`` for compressed data) give the bytes the data must occupy.

Other formats (``.nrrd``) are left to the reader, which refuses truncated files with its own clear message.
"""

from __future__ import annotations

import os
import re
import zlib
from pathlib import Path

import numpy as np

from nnssl.imageio.header import ImageReadError

CHUNK_BYTES = 1 << 20
#: bytes per component of the MetaImage element types whose size does not depend on the platform
METAIMAGE_TYPE_BYTES = {
    "MET_CHAR": 1,
    "MET_UCHAR": 1,
    "MET_SHORT": 2,
    "MET_USHORT": 2,
    "MET_INT": 4,
    "MET_UINT": 4,
    "MET_LONG_LONG": 8,
    "MET_ULONG_LONG": 8,
    "MET_FLOAT": 4,
    "MET_DOUBLE": 8,
}
_METAIMAGE_HEADER_LIMIT = 1 << 16


def is_gzip(path: str | os.PathLike[str]) -> bool:
    """Whether the file starts with the gzip magic bytes."""
    with open(path, "rb") as f:
        return f.read(2) == b"\x1f\x8b"


def check_file_complete(path: str | os.PathLike[str], thorough: bool) -> None:
    """Raise :class:`ImageReadError` if ``path`` holds fewer voxel bytes than its header promises or is corrupt.

    ``thorough`` also decompresses gzip data whose size looks right, to verify its CRC (see the module docstring).
    Files of formats this module does not know pass unchecked.
    """
    name = str(path).lower()
    if name.endswith((".nii", ".nii.gz")):
        _check_nifti(str(path), thorough)
    elif name.endswith((".mha", ".mhd")):
        _check_metaimage(str(path))


def _nifti_data_end(path: str) -> int:
    """Byte offset where the NIfTI voxel data ends (in the uncompressed stream)."""
    import nibabel as nib

    proxy = nib.load(path).dataobj  # its offset is where nibabel reads (vox_offset 0 means "right after the header")
    return int(proxy.offset) + int(np.prod(proxy.shape, dtype=np.int64)) * np.dtype(proxy.dtype).itemsize


def _check_nifti(path: str, thorough: bool) -> None:
    try:
        expected = _nifti_data_end(path)
    except Exception:  # an unreadable header: the readers report it with their own reasons
        return
    if not is_gzip(path):
        held = os.path.getsize(path)
        if held < expected:
            raise ImageReadError(path, _truncated(expected, held, "bytes"))
        return
    if not thorough and _gzip_trailer_size(path) == expected % 2**32:
        return
    held = _gunzipped_size(path, expected)
    if held < expected:
        raise ImageReadError(path, _truncated(expected, held, "bytes once decompressed"))


def _gzip_trailer_size(path: str) -> int:
    """ISIZE: the last four bytes of a gzip file, the uncompressed size of its last member modulo 2^32."""
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        if f.tell() < 18:
            return -1
        f.seek(-4, os.SEEK_END)
        return int.from_bytes(f.read(4), "little")


def _gunzipped_size(path: str, expected: int) -> int:
    """Decompress every gzip member of ``path`` (zlib verifies each member's CRC-32 and length) and return the
    total size; a stream that ends early or does not decompress raises :class:`ImageReadError` naming the byte."""
    total = 0
    inflater = zlib.decompressobj(wbits=31)
    try:
        with open(path, "rb") as f:
            while chunk := f.read(CHUNK_BYTES):
                data = chunk
                while data:
                    if inflater.eof:  # the next gzip member (bgzip and pigz write several); zero padding is allowed
                        data = data.lstrip(b"\x00")
                        if not data:
                            break
                        inflater = zlib.decompressobj(wbits=31)
                    total += len(inflater.decompress(data, CHUNK_BYTES))
                    data = inflater.unconsumed_tail or (inflater.unused_data if inflater.eof else b"")
    except zlib.error as err:
        altered = "check" in str(err)  # "incorrect data check" / "incorrect length check": the CRC-32 or size differs
        what = "the checksum of its decompressed data does not match (bytes were altered)" if altered else str(err)
        raise ImageReadError(
            path,
            f"the file is corrupt: its gzip data does not decompress ({what}; zlib: {err}). Copy the file again or "
            "remove it from pretrain_data.json.",
        ) from None
    if not inflater.eof:
        raise ImageReadError(
            path,
            f"the file is truncated: its gzip stream stops after {total} of the {expected} bytes the header "
            f"promises ({100 * total / max(expected, 1):.1f}%; an interrupted copy or download?). Copy the file "
            "again or remove it from pretrain_data.json.",
        )
    return total


def _truncated(expected: int, held: int, unit: str) -> str:
    return (
        f"the file is truncated: the header promises voxel data up to byte {expected}, but the file holds only "
        f"{held} {unit} ({100 * held / max(expected, 1):.1f}%; an interrupted copy or download?). Copy the file "
        "again or remove it from pretrain_data.json."
    )


def _metaimage_header(path: str) -> tuple[dict[str, str], int]:
    """The ``Key = Value`` fields of a MetaImage header and the byte offset just after ``ElementDataFile``."""
    fields: dict[str, str] = {}
    with open(path, "rb") as f:
        head = f.read(_METAIMAGE_HEADER_LIMIT)
    offset = 0
    for raw_line in head.splitlines(keepends=True):
        offset += len(raw_line)
        line = raw_line.decode("latin-1").strip()
        key, sep, value = line.partition("=")
        if not sep:
            continue
        fields[key.strip()] = value.strip()
        if key.strip() == "ElementDataFile":
            return fields, offset
    return fields, -1


def _check_metaimage(path: str) -> None:
    fields, data_start = _metaimage_header(path)
    data_file = fields.get("ElementDataFile", "")
    element_bytes = METAIMAGE_TYPE_BYTES.get(fields.get("ElementType", ""))
    try:
        dims = [int(v) for v in fields.get("DimSize", "").split()]
        channels = int(fields.get("ElementNumberOfChannels", "1"))
        header_size = int(fields.get("HeaderSize", "0"))
    except ValueError:
        return  # a malformed header: the reader reports it
    if not dims or element_bytes is None or data_start < 0:
        return
    if data_file == "LOCAL":
        data_path, start = path, data_start
    elif data_file and data_file != "LIST" and not re.search(r"%|\s", data_file):
        data_path, start = str(Path(path).parent / data_file), max(header_size, 0)
        if header_size < 0 or not Path(data_path).is_file():
            return  # data at the end of a larger file, or a missing file the reader names itself
    else:
        return
    compressed = fields.get("CompressedData", "False").lower() == "true"
    if compressed:
        try:
            expected = int(fields.get("CompressedDataSize", "-1"))
        except ValueError:
            return
        if expected < 0:
            return
        unit = "compressed bytes"
    else:
        expected = int(np.prod(dims, dtype=np.int64)) * channels * element_bytes
        unit = "bytes"
    held = os.path.getsize(data_path) - start
    if held < expected:
        raise ImageReadError(
            path,
            f"the file is truncated: its header promises {expected} {unit} of voxel data in {data_path}, which "
            f"holds only {held} ({100 * held / max(expected, 1):.1f}%; an interrupted copy or download?). Copy the "
            "file again or remove it from pretrain_data.json.",
        )
