"""The one JSON serializer (dataclasses, numpy, paths), atomic file writes, and the out-of-space error.

Every file nnssl writes goes through :func:`atomic_path`: it is written under a temporary name in the
same folder and renamed into place, so an interrupted run never leaves a half-written file under the
final name. :func:`load_json` is the one JSON reader: whatever is wrong with a file (not UTF-8, not JSON,
nested too deeply for the parser) becomes a ``ValueError`` that names the file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import os
import shutil
import sys
import uuid
from collections.abc import Callable, Iterator
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np

TEMP_MARKER = ".nnssl_tmp"


def to_jsonable(obj: Any) -> Any:
    """Turn dataclasses, numpy values, paths, tuples and enums into plain JSON types.

    Integral floats stay floats; use :func:`integral_floats_to_int` where a contract wants ints.
    """
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, Enum):
        return obj.value
    return obj


def integral_floats_to_int(obj: Any) -> Any:
    """Recursively turn floats such as ``1.0`` into ``1`` (upstream's adaptation-plan convention)."""
    if isinstance(obj, dict):
        return {k: integral_floats_to_int(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [integral_floats_to_int(v) for v in obj]
    if isinstance(obj, float) and obj.is_integer():
        return int(obj)
    return obj


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it to ``path``, on error delete it.

    The temporary name keeps the final suffix (``x.nnssl_tmp-<id>.b2nd``) so that libraries that
    look at suffixes keep working.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f"{final.stem}{TEMP_MARKER}-{uuid.uuid4().hex[:8]}{final.suffix}")
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()


def is_temporary(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a leftover temporary file of :func:`atomic_path`."""
    return TEMP_MARKER in Path(path).name


def save_json(obj: Any, path: str | os.PathLike[str], indent: int = 4, sort_keys: bool = False) -> None:
    """Write ``obj`` as JSON atomically."""
    text = json.dumps(to_jsonable(obj), indent=indent, sort_keys=sort_keys, allow_nan=False)
    with atomic_path(path) as tmp:
        tmp.write_text(text + "\n", encoding="utf-8")


def load_json(
    path: str | os.PathLike[str], object_pairs_hook: Callable[[list[tuple[str, Any]]], Any] | None = None
) -> Any:
    """Read a UTF-8 JSON file; anything that stops it from parsing is a ValueError naming the file and the fix.

    ``object_pairs_hook`` is passed to :func:`json.loads` (e.g. to notice repeated keys).
    """
    path = Path(path)
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise ValueError(
            f"{path} is not UTF-8 text: byte {raw[err.start : err.start + 1]!r} at offset {err.start} (line {line}) "
            "cannot be decoded. JSON files must be UTF-8: re-save it as UTF-8 (e.g. iconv -f latin1 -t utf-8)."
        ) from None
    try:
        return json.loads(text, object_pairs_hook=object_pairs_hook)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from err
    except RecursionError:
        raise ValueError(
            f"{path} nests arrays/objects too deeply for the JSON parser (more than about "
            f"{sys.getrecursionlimit()} levels); no nnssl file needs more than a few levels, so the file is "
            "probably corrupt or not the file you meant."
        ) from None


#: errno values that mean "the disk (or the user's quota) is full".
OUT_OF_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


class OutOfSpaceError(OSError):
    """Writing under ``path`` failed because its file system is full; the message says what to do."""

    def __init__(self, path: str | os.PathLike[str], detail: str = "") -> None:
        self.path = str(path)
        free = free_bytes(self.path)
        free_text = "unknown" if free is None else f"{free / 2**20:.1f} MiB"
        message = f"no space left on {self.path} (free now: {free_text})"
        super().__init__(errno.ENOSPC, f"{message}. {detail}".strip())

    def __str__(self) -> str:
        return str(self.args[1])


def free_bytes(path: str | os.PathLike[str]) -> int | None:
    """Free bytes on the file system holding ``path`` (its nearest existing parent); None if unknown."""
    current = Path(path)
    while not current.exists() and current != current.parent:
        current = current.parent
    try:
        return shutil.disk_usage(current).free
    except OSError:
        return None


def is_out_of_space(err: BaseException, path: str | os.PathLike[str], needed_bytes: int = 0) -> bool:
    """Whether ``err`` (raised while writing about ``needed_bytes`` under ``path``) means the disk is full.

    True when ``err`` or an exception it was raised from carries ENOSPC/EDQUOT, or when the file system now has
    fewer than ``needed_bytes`` free: libraries such as blosc2 report a full disk only as a generic
    RuntimeError ("Error while creating the NDArray").
    """
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in OUT_OF_SPACE_ERRNOS:
            return True
        seen = seen.__cause__ or seen.__context__
    free = free_bytes(path)
    return free is not None and free < needed_bytes
