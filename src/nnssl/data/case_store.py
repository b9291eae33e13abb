"""The preprocessed case store: one case = blosc2 ``.b2nd`` arrays plus a JSON properties file.

Layout of one case with stem ``<dir>/<name>``::

    <name>.b2nd          image (C, X, Y, Z), float32 (or float16 with storage_precision float16)
    <name>__anat.b2nd    int8 anatomy mask (1, X, Y, Z), 1 = anatomy      (optional)
    <name>__anon.b2nd    int8 anonymization mask (1, X, Y, Z), 1 = defaced (optional)
    <name>.json          properties (spacing, cropping bbox, normalization, ...) - written last

Every file is written under a temporary name (:func:`nnssl.serialization.atomic_path`) and renamed, and the
properties JSON is renamed last, so its presence marks a complete case (:func:`case_is_complete`). No pickle.

Format (:class:`StoreFormat`, chosen with ``benchmarks/store_codecs.py`` on the preprocessed demo volumes; figures
in documentation/data_path.md): LZ4HC level 9, byte shuffle with split streams, 64^3 chunks of 32^3 blocks. A
160^3 read decompresses only the blocks it touches. Against upstream's ZSTD-8 store it is 5% larger and decodes 2x
faster; against the previous LZ4HC-5/16^3 default 4% smaller at the same decode speed. No lossless codec measured
was both as small as upstream's and 2x faster to decode (ZSTD levels reach 0.96-0.99 of its size at 0.9-1.1x its
decode speed; ZSTD with split streams or bytedelta, LZ4HC with bytedelta, bitshuffle, block sides 16 to 64 and
non-cubic blocks did not close the gap either: the best LZ4HC layout is 4% larger than upstream's store; issue 11).
``precision`` "float16" (half the bytes of upstream's store, 3.5x faster decode, relative error below 2^-11) or
"mantissa<N>" is the user's opt-in, recorded in the plans as ``storage_precision``. The format
of every case is recorded in its properties (``storage``) with the file checksums (``checksums``), and blosc2
decodes any codec, so stores written with older formats stay readable.
"""

from __future__ import annotations

import dataclasses
import math
import os
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import blosc2
import numpy as np

from nnssl.serialization import atomic_path, is_temporary, load_json, save_json

MASK_SUFFIXES = {"anatomy": "__anat", "anonymization": "__anon"}
DATA_SUFFIX = ".b2nd"
PROPERTIES_SUFFIX = ".json"
PRECISIONS_HELP = "'float32' (lossless), 'float16', or 'mantissa<N>' (float32 keeping N of 23 mantissa bits, 1..22)"


class CaseReadError(RuntimeError):
    """A stored case that cannot be opened or decoded; the message names its unique id and file."""

    def __init__(self, message: str, path: str | os.PathLike[str], unique_id: str | None = None) -> None:
        super().__init__(message)
        self.path = str(path)
        self.unique_id = unique_id


@dataclass(frozen=True)
class StoreFormat:
    """How arrays are compressed: codec, level, filters (in order), chunk/block cube sides, split mode, precision.

    ``precision`` applies to the image only (masks are int8): ``"float32"`` is lossless; ``"float16"`` stores
    half floats (the loader returns float32); ``"mantissa<N>"`` keeps float32 but zeroes all but N mantissa
    bits (blosc2's TRUNC_PREC filter), which compresses better at a relative error below ``2**-N``.
    """

    codec: str = "LZ4HC"
    clevel: int = 9
    filters: tuple[str, ...] = ("SHUFFLE",)
    chunk_side: int | tuple[int, int, int] = 64
    block_side: int | tuple[int, int, int] = 32
    precision: str = "float32"
    splitmode: str = "ALWAYS_SPLIT"

    def __post_init__(self) -> None:
        if self.codec not in blosc2.Codec.__members__:
            raise ValueError(f"Unknown blosc2 codec '{self.codec}'; use one of {list(blosc2.Codec.__members__)}.")
        unknown = [f for f in self.filters if f not in blosc2.Filter.__members__]
        if unknown:
            raise ValueError(f"Unknown blosc2 filter(s) {unknown}; use some of {list(blosc2.Filter.__members__)}.")
        object.__setattr__(self, "filters", tuple(self.filters))
        for name in ("chunk_side", "block_side"):
            object.__setattr__(self, name, _sides(getattr(self, name), name))
        if self.splitmode not in blosc2.SplitMode.__members__:
            known = list(blosc2.SplitMode.__members__)
            raise ValueError(f"Unknown blosc2 split mode '{self.splitmode}'; use one of {known}.")
        image_dtype(self.precision)

    def cparams(self, dtype: np.dtype, is_image: bool) -> blosc2.CParams:
        """blosc2 compression parameters for an array of ``dtype`` (the image or a mask)."""
        filters, meta = [blosc2.Filter[f] for f in self.filters], [0] * len(self.filters)
        bits = mantissa_bits(self.precision) if is_image else None
        if bits is not None:
            filters, meta = [blosc2.Filter.TRUNC_PREC, *filters], [bits, *meta]
        return blosc2.CParams(
            codec=blosc2.Codec[self.codec],
            clevel=self.clevel,
            typesize=np.dtype(dtype).itemsize,
            filters=filters,
            filters_meta=meta,
            splitmode=blosc2.SplitMode[self.splitmode],
            nthreads=min(4, os.cpu_count() or 1),
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _sides(value: Any, name: str) -> int | tuple[int, int, int]:
    """A positive cube side (int), or three positive per-axis sides (X, Y, Z) as a tuple (JSON gives lists)."""

    def positive(v: Any) -> bool:
        return isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0

    if positive(value):
        return int(value)
    if isinstance(value, Sequence) and len(value) == 3 and all(positive(v) for v in value):
        return (int(value[0]), int(value[1]), int(value[2]))
    raise ValueError(f"StoreFormat {name} must be a positive int or three positive ints (X, Y, Z); got {value!r}.")


def mantissa_bits(precision: str) -> int | None:
    """N of ``"mantissa<N>"``, None for the other precisions."""
    if not precision.startswith("mantissa"):
        return None
    text = precision[len("mantissa") :]
    if not text.isdigit() or not 1 <= int(text) <= 22:
        raise ValueError(f"Unknown storage precision '{precision}'; use {PRECISIONS_HELP}.")
    return int(text)


def image_dtype(precision: str) -> np.dtype:
    """The dtype the image is stored with under ``precision``; an unknown precision raises ValueError."""
    if precision == "float16":
        return np.dtype(np.float16)
    if precision == "float32" or mantissa_bits(precision) is not None:
        return np.dtype(np.float32)
    raise ValueError(f"Unknown storage precision '{precision}'; use {PRECISIONS_HELP}.")


#: Chosen by ``benchmarks/store_codecs.py`` on the demo volumes (documentation/case_store.md has the figures).
DEFAULT_FORMAT = StoreFormat()


@dataclass
class PreprocessedCase:
    """A stored case opened lazily: slicing ``data``/``masks`` decompresses only the touched chunks."""

    data: blosc2.NDArray
    masks: dict[str, blosc2.NDArray] = field(default_factory=dict)
    properties: dict[str, Any] = field(default_factory=dict)


def _stem(stem: str | os.PathLike[str]) -> Path:
    path = Path(stem)
    if path.name.endswith(DATA_SUFFIX):
        path = path.with_name(path.name[: -len(DATA_SUFFIX)])
    return path


def data_path(stem: str | os.PathLike[str]) -> Path:
    """``<stem>.b2nd``."""
    path = _stem(stem)
    return path.with_name(path.name + DATA_SUFFIX)


def mask_path(stem: str | os.PathLike[str], kind: str) -> Path:
    """``<stem>__anat.b2nd`` for ``kind="anatomy"``, ``<stem>__anon.b2nd`` for ``kind="anonymization"``."""
    if kind not in MASK_SUFFIXES:
        raise KeyError(f"Unknown mask kind '{kind}'; use one of {sorted(MASK_SUFFIXES)}.")
    path = _stem(stem)
    return path.with_name(path.name + MASK_SUFFIXES[kind] + DATA_SUFFIX)


def properties_path(stem: str | os.PathLike[str]) -> Path:
    """``<stem>.json`` (the completion marker)."""
    path = _stem(stem)
    return path.with_name(path.name + PROPERTIES_SUFFIX)


def chunk_and_block_shape(
    shape: Sequence[int],
    chunk_side: int | Sequence[int] = DEFAULT_FORMAT.chunk_side,
    block_side: int | Sequence[int] = DEFAULT_FORMAT.block_side,
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Chunks and blocks for a (C, X, Y, Z) array: one channel, sides ``chunk_side`` and ``block_side``.

    A side is a cube side or three per-axis sides. Spatial sides are capped at the array's extent; a chunk side is
    rounded to a multiple of the block side so that blocks tile chunks.
    """
    spatial = [int(s) for s in shape[1:]]
    chunk_sides = [chunk_side] * 3 if isinstance(chunk_side, (int, np.integer)) else list(chunk_side)
    block_sides = [block_side] * 3 if isinstance(block_side, (int, np.integer)) else list(block_side)
    blocks = [max(1, min(int(b), s)) for b, s in zip(block_sides, spatial)]
    chunks = []
    for s, b, cs in zip(spatial, blocks, chunk_sides):
        c = min(int(cs), s)
        chunks.append(max(b, int(math.ceil(c / b)) * b))
    return (1, *chunks), (1, *blocks)


def file_checksum(path: str | os.PathLike[str]) -> str:
    """``"crc32:<8 hex digits>"`` of a file's bytes (about 1 GB/s; catches any flipped bit or truncation)."""
    crc = 0
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            crc = zlib.crc32(block, crc)
    return f"crc32:{crc:08x}"


def write_array(path: str | os.PathLike[str], array: np.ndarray, fmt: StoreFormat, is_image: bool) -> str:
    """Write one ``.b2nd`` array atomically in format ``fmt``; returns the file's checksum."""
    chunks, blocks = chunk_and_block_shape(array.shape, fmt.chunk_side, fmt.block_side)
    with atomic_path(path) as tmp:
        arr = blosc2.asarray(
            np.ascontiguousarray(array),
            urlpath=str(tmp),
            mode="w",
            chunks=chunks,
            blocks=blocks,
            cparams=fmt.cparams(array.dtype, is_image),
        )
        del arr
        checksum = file_checksum(tmp)
    return checksum


def write_case(
    stem: str | os.PathLike[str],
    data: np.ndarray,
    properties: dict[str, Any],
    masks: dict[str, np.ndarray] | None = None,
    fmt: StoreFormat = DEFAULT_FORMAT,
) -> None:
    """Write one case atomically: data (``fmt.precision``), int8 masks ("anatomy"/"anonymization"), properties last.

    Masks must share the data's spatial grid; a mismatch is an error naming the mask. The properties record
    ``storage`` (``fmt``) and ``checksums`` ({"image" | mask kind: :func:`file_checksum`}) for
    :func:`verify_case`.
    """
    data = np.asarray(data)
    if data.ndim != 4:
        raise ValueError(f"Case data must be (C, X, Y, Z); got shape {data.shape} for {stem}.")
    masks = masks or {}
    for kind, mask in masks.items():
        if kind not in MASK_SUFFIXES:
            raise KeyError(f"Unknown mask kind '{kind}' for {stem}; use one of {sorted(MASK_SUFFIXES)}.")
        if tuple(mask.shape) != (1, *data.shape[1:]):
            raise ValueError(
                f"The {kind} mask of {stem} has shape {tuple(mask.shape)}, expected {(1, *data.shape[1:])}."
            )
    final_props = properties_path(stem)
    if final_props.exists():
        final_props.unlink()
    stored = data.astype(image_dtype(fmt.precision), copy=False)
    if stored.dtype == np.float16 and not np.isfinite(stored).all() and np.isfinite(data).all():
        raise ValueError(
            f"{stem}: voxel values up to {float(np.abs(data).max()):.4g} do not fit storage precision {fmt.precision} "
            "(float16 ends at 65504); store this dataset as float32 (storage_precision in the plans)."
        )
    checksums = {"image": write_array(data_path(stem), stored, fmt, True)}
    for kind, mask in masks.items():
        checksums[kind] = write_array(mask_path(stem, kind), np.asarray(mask).astype(np.int8, copy=False), fmt, False)
    for kind in MASK_SUFFIXES:
        if kind not in masks and mask_path(stem, kind).exists():
            mask_path(stem, kind).unlink()
    props = dict(properties)
    props["stored_masks"] = sorted(masks)
    props["storage"] = fmt.to_dict()
    props["checksums"] = checksums
    save_json(props, final_props)


def case_is_complete(stem: str | os.PathLike[str]) -> bool:
    """Whether the case's properties JSON (written last) and every file it lists exist."""
    props_file = properties_path(stem)
    if not props_file.is_file() or not data_path(stem).is_file():
        return False
    try:
        props = load_json(props_file)
    except (ValueError, OSError):
        return False
    return all(mask_path(stem, kind).is_file() for kind in props.get("stored_masks", []))


def _case_name(stem: str | os.PathLike[str], unique_id: str | None) -> str:
    return f"case {unique_id} ({data_path(stem)})" if unique_id else f"case {data_path(stem)}"


def open_case(stem: str | os.PathLike[str], nthreads: int = 1, unique_id: str | None = None) -> PreprocessedCase:
    """Open a complete case lazily (memory-mapped, read-only).

    ``nthreads`` is blosc2's decompression threads per array; 1 suits data-loader worker processes, which
    already run in parallel. A case whose files exist but cannot be opened raises :class:`CaseReadError`
    naming ``unique_id`` (else the properties' ``unique_id``) and the file.
    """
    if is_temporary(stem):
        raise ValueError(f"{stem} is a temporary file of an unfinished write, not a case.")
    if not case_is_complete(stem):
        raise FileNotFoundError(
            f"No complete preprocessed case at {data_path(stem)} (missing {properties_path(stem).name} or an array). "
            "Re-run nnssl_preprocess for this dataset; it redoes unfinished cases."
        )
    props = load_json(properties_path(stem))
    unique_id = unique_id or props.get("unique_id")
    dparams = blosc2.DParams(nthreads=nthreads)
    current = data_path(stem)
    try:
        data = blosc2.open(str(current), mode="r", mmap_mode="r", dparams=dparams)
        masks = {}
        for kind in props.get("stored_masks", []):
            current = mask_path(stem, kind)
            masks[kind] = blosc2.open(str(current), mode="r", mmap_mode="r", dparams=dparams)
    except Exception as err:  # blosc2 raises RuntimeError/ValueError/OSError for damaged files
        raise CaseReadError(
            f"{_case_name(stem, unique_id)}: cannot open {current.name}: {type(err).__name__}: {err}. "
            "The file is damaged; list and redo damaged cases with nnssl_verify_dataset --redo.",
            current,
            unique_id,
        ) from err
    return PreprocessedCase(data=data, masks=masks, properties=props)


def verify_case(stem: str | os.PathLike[str]) -> list[str]:
    """Problems of a stored case (empty when it is sound): every chunk of every array is decoded.

    Checks, per array: the file's checksum against the one recorded at writing (cases written before checksums
    were recorded skip this), that every chunk decodes, and that image values are finite.
    """
    if not case_is_complete(stem):
        return [f"incomplete: {properties_path(stem).name} or an array file is missing"]
    try:
        props = load_json(properties_path(stem))
    except (ValueError, OSError) as err:
        return [f"{properties_path(stem).name} is unreadable: {err}"]
    problems = []
    arrays = {"image": data_path(stem)} | {kind: mask_path(stem, kind) for kind in props.get("stored_masks", [])}
    recorded = props.get("checksums") or {}
    for kind, path in arrays.items():
        if kind in recorded and file_checksum(path) != recorded[kind]:
            problems.append(f"{path.name}: checksum {file_checksum(path)} differs from {recorded[kind]} recorded")
            continue
        try:
            array = blosc2.open(str(path), mode="r", mmap_mode="r")
            dtype = array.dtype
            for i in range(array.schunk.nchunks):
                chunk = np.frombuffer(array.schunk.decompress_chunk(i), dtype=dtype)
                if kind == "image" and not np.isfinite(chunk).all():
                    problems.append(f"{path.name}: chunk {i} holds non-finite values")
                    break
        except Exception as err:  # any decoding failure is the finding
            problems.append(f"{path.name}: cannot be decoded ({type(err).__name__}: {err})")
    return problems
