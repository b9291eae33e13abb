"""The one JSON serializer (dataclasses, numpy, paths) and atomic file writes.

Every file nnssl writes goes through :func:`atomic_path`: it is written under a temporary name in the
same folder and renamed into place, so an interrupted run never leaves a half-written file under the
final name.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import uuid
from collections.abc import Iterator
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


def load_json(path: str | os.PathLike[str]) -> Any:
    """Read a JSON file; a parse error names the file."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from err
