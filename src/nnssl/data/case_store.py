"""The preprocessed case store: one case = blosc2 ``.b2nd`` arrays plus a JSON properties file.

Layout of one case with stem ``<dir>/<name>``::

    <name>.b2nd          float32 image (C, X, Y, Z)
    <name>__anat.b2nd    int8 anatomy mask (1, X, Y, Z), 1 = anatomy      (optional)
    <name>__anon.b2nd    int8 anonymization mask (1, X, Y, Z), 1 = defaced (optional)
    <name>.json          properties (spacing, cropping bbox, normalization, ...) - written last

Every file is written under a temporary name (:func:`nnssl.serialization.atomic_path`) and renamed, and the
properties JSON is renamed last, so its presence marks a complete case (:func:`case_is_complete`). No pickle.

Chunking is chosen for random patch reads (training reads 160^3 patches): chunks are cubes of side ~64 and blocks
cubes of side 16 (see :func:`chunk_and_block_shape`); a 160^3 read then decompresses at most ceil(160/64)+1 = 4
chunks per axis instead of the whole volume. The codec is LZ4HC (level 5, byte shuffle): about 3x faster to decode
than ZSTD at ~30% more bytes on disk, measured on the demo volumes; ``benchmarks/preprocess.py`` measures the reads.
"""

from __future__ import annotations

import math
import os
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
CHUNK_SIDE = 64
BLOCK_SIDE = 16
CODEC = blosc2.Codec.LZ4HC
CLEVEL = 5


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
    shape: Sequence[int], chunk_side: int = CHUNK_SIDE, block_side: int = BLOCK_SIDE
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Chunks and blocks for a (C, X, Y, Z) array: one channel, cubes of ``chunk_side`` and ``block_side``.

    Spatial sides are capped at the array's extent; a chunk side is rounded to a multiple of the block side
    so that blocks tile chunks.
    """
    spatial = [int(s) for s in shape[1:]]
    blocks = [max(1, min(block_side, s)) for s in spatial]
    chunks = []
    for s, b in zip(spatial, blocks):
        c = min(chunk_side, s)
        chunks.append(max(b, int(math.ceil(c / b)) * b))
    return (1, *chunks), (1, *blocks)


def _write_array(path: Path, array: np.ndarray) -> None:
    chunks, blocks = chunk_and_block_shape(array.shape)
    cparams = blosc2.CParams(
        codec=CODEC,
        clevel=CLEVEL,
        typesize=array.dtype.itemsize,
        filters=[blosc2.Filter.SHUFFLE],
        nthreads=min(4, os.cpu_count() or 1),
    )
    with atomic_path(path) as tmp:
        arr = blosc2.asarray(
            np.ascontiguousarray(array), urlpath=str(tmp), mode="w", chunks=chunks, blocks=blocks, cparams=cparams
        )
        del arr


def write_case(
    stem: str | os.PathLike[str],
    data: np.ndarray,
    properties: dict[str, Any],
    masks: dict[str, np.ndarray] | None = None,
) -> None:
    """Write one case atomically: data (float32), masks (int8, keys "anatomy"/"anonymization"), properties last.

    Masks must share the data's spatial grid; a mismatch is an error naming the mask.
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
    _write_array(data_path(stem), data.astype(np.float32, copy=False))
    for kind, mask in masks.items():
        _write_array(mask_path(stem, kind), np.asarray(mask).astype(np.int8, copy=False))
    for kind in MASK_SUFFIXES:
        if kind not in masks and mask_path(stem, kind).exists():
            mask_path(stem, kind).unlink()
    props = dict(properties)
    props["stored_masks"] = sorted(masks)
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


def open_case(stem: str | os.PathLike[str], nthreads: int = 1) -> PreprocessedCase:
    """Open a complete case lazily (memory-mapped, read-only).

    ``nthreads`` is blosc2's decompression threads per array; 1 suits data-loader worker processes, which
    already run in parallel.
    """
    if is_temporary(stem):
        raise ValueError(f"{stem} is a temporary file of an unfinished write, not a case.")
    if not case_is_complete(stem):
        raise FileNotFoundError(
            f"No complete preprocessed case at {data_path(stem)} (missing {properties_path(stem).name} or an array). "
            "Re-run nnssl_preprocess for this dataset; it redoes unfinished cases."
        )
    props = load_json(properties_path(stem))
    dparams = blosc2.DParams(nthreads=nthreads)
    data = blosc2.open(str(data_path(stem)), mode="r", mmap_mode="r", dparams=dparams)
    masks = {
        kind: blosc2.open(str(mask_path(stem, kind)), mode="r", mmap_mode="r", dparams=dparams)
        for kind in props.get("stored_masks", [])
    }
    return PreprocessedCase(data=data, masks=masks, properties=props)
