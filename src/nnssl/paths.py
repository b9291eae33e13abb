"""The three nnssl root folders, read from the environment when needed (never at import time).

``nnssl_raw`` holds ``DatasetXXX_Name/pretrain_data.json``, ``nnssl_preprocessed`` the fingerprints,
plans and blosc2 cases, ``nnssl_results`` the training runs. The variable names are upstream nnssl's.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

RAW = "nnssl_raw"
PREPROCESSED = "nnssl_preprocessed"
RESULTS = "nnssl_results"

_DATASET_NAME = re.compile(r"^Dataset(\d{3})_[A-Za-z0-9_\-.]+$")


class MissingEnvironmentVariable(RuntimeError):
    """A root folder variable that a command needs is not set."""


def env_folder(variable: str) -> Path:
    """Return the folder named by environment variable ``variable``, or explain how to set it."""
    value = os.environ.get(variable)
    if not value:
        raise MissingEnvironmentVariable(
            f"The environment variable '{variable}' is not set, and this command needs it. "
            f"Set it to a folder, for example: export {variable}=/data/{variable}"
        )
    return Path(value)


def raw_folder() -> Path:
    """``$nnssl_raw``."""
    return env_folder(RAW)


def preprocessed_folder() -> Path:
    """``$nnssl_preprocessed``."""
    return env_folder(PREPROCESSED)


def results_folder() -> Path:
    """``$nnssl_results``."""
    return env_folder(RESULTS)


def dataset_id(name: str) -> int:
    """The numeric id of a ``DatasetXXX_Name`` folder name."""
    match = _DATASET_NAME.match(name)
    if not match:
        raise ValueError(f"'{name}' is not a dataset name of the form DatasetXXX_Name (XXX: three digits).")
    return int(match.group(1))


def resolve_dataset_name(name_or_id: str | int, search: tuple[str, ...] = (RAW, PREPROCESSED, RESULTS)) -> str:
    """Turn ``745`` or ``'Dataset745_OpenMind'`` into the dataset folder name.

    An id is matched against the folders ``Dataset%03d_*`` under every root in ``search`` that is set.
    It is an error if none or more than one distinct name matches.
    """
    text = str(name_or_id)
    if not text.isdigit():
        dataset_id(text)
        return text
    prefix = f"Dataset{int(text):03d}_"
    found: set[str] = set()
    for variable in search:
        root = os.environ.get(variable)
        if root and Path(root).is_dir():
            found.update(p.name for p in Path(root).iterdir() if p.is_dir() and p.name.startswith(prefix))
    if not found:
        roots = ", ".join(f"${v}" for v in search)
        raise FileNotFoundError(f"No folder named {prefix}* under {roots}. Is the dataset id {text} right?")
    if len(found) > 1:
        raise ValueError(f"Dataset id {text} is ambiguous: {sorted(found)}. Pass the full name instead.")
    return found.pop()
