"""Checkpoint files: atomic writes, safe loading, resume selection, RNG state, pretrained weights.

A checkpoint is a dict of tensors and plain Python values only, so the whole file loads with
``torch.load(path, weights_only=True)``. Keys: ``network_weights`` (the backbone's ``state_dict``,
unwrapped, keys as downstream nnU-Net expects), ``nnssl_adaptation_plan``, ``method_state`` (the whole
method incl. heads/teachers), ``optimizer_state``, ``grad_scaler_state``, ``current_epoch`` (the next epoch
to run), ``global_step``, ``epoch_progress`` (non-empty only for a mid-epoch stop), ``rng_state``,
``config`` (JSON form of the RunConfig), ``logging`` (per-epoch lists), ``best_val_loss``.

Files are written through :func:`nnssl.serialization.atomic_path`; a file that cannot be read is never
deleted (upstream deleted it and restarted silently): the error names it.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from nnssl.serialization import atomic_path

logger = logging.getLogger(__name__)

RESUME_ORDER = ("checkpoint_final.pth", "checkpoint_latest.pth", "checkpoint_best.pth")
#: Configuration entries that must match for ``--c`` to continue a run.
RESUME_MUST_MATCH = ("method", "architecture", "train.patch_size", "train.batch_size")


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be used; the message names the file and what to do."""


def save_checkpoint(payload: dict[str, Any], path: str | Path) -> None:
    """``torch.save`` to a temporary file beside ``path``, then rename (never a half-written checkpoint)."""
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint on CPU with ``weights_only=True``; unreadable files raise :class:`CheckpointError`."""
    path = Path(path)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any failure here means the file is unusable
        raise CheckpointError(
            f"Could not read checkpoint {path} ({type(err).__name__}: {err}). The file was left in place. "
            "If it is corrupted (e.g. the job was killed while copying it), move it away and run again; "
            "--c then uses the next checkpoint (final > latest > best)."
        ) from None
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"{path} does not hold a checkpoint dictionary (found {type(checkpoint).__name__}).")
    return checkpoint


def find_resume_checkpoint(folder: str | Path) -> Path | None:
    """The checkpoint ``--c`` continues from: final > latest > best (temporary files are ignored)."""
    for name in RESUME_ORDER:
        candidate = Path(folder) / name
        if candidate.is_file():
            return candidate
    return None


def _lookup(config: dict[str, Any], dotted: str) -> Any:
    value: Any = config
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def config_differences(
    saved: dict[str, Any], current: dict[str, Any], keys: tuple[str, ...] = RESUME_MUST_MATCH
) -> list[str]:
    """Human-readable ``key: checkpoint=... now=...`` lines for every key in ``keys`` that differs."""
    diffs = []
    for key in keys:
        a, b = _lookup(saved, key), _lookup(current, key)
        if (list(a) if isinstance(a, (list, tuple)) else a) != (list(b) if isinstance(b, (list, tuple)) else b):
            diffs.append(f"{key}: checkpoint={a!r} now={b!r}")
    return diffs


def capture_rng_state() -> dict[str, Any]:
    """Python, NumPy, torch CPU and CUDA generator states as tensors and plain types."""
    py_version, py_state, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": [py_version, list(py_state), py_gauss],
        "numpy": [np_name, torch.from_numpy(np_keys.astype(np.int64)), int(np_pos), int(np_has_gauss), float(np_gauss)],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    py_version, py_state, py_gauss = state["python"]
    random.setstate((py_version, tuple(py_state), py_gauss))
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = state["numpy"]
    np.random.set_state(
        (np_name, np.asarray(np_keys, dtype=np.int64).astype(np.uint32), np_pos, np_has_gauss, np_gauss)
    )
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def _strip_prefixes(key: str) -> str:
    for prefix in ("module.", "_orig_mod."):
        while key.startswith(prefix):
            key = key[len(prefix) :]
    return key


def load_pretrained_weights(module: nn.Module, path: str | Path) -> tuple[list[str], list[str]]:
    """Load every key of ``path`` that ``module`` has with the same shape; return ``(loaded, not_loaded)``.

    ``path`` is an nnssl/nnU-Net checkpoint (its ``network_weights``) or a bare state dict. ``not_loaded``
    lists the module's keys that kept their initial values (missing from the file or of another shape).
    """
    checkpoint = load_checkpoint(path)
    weights = checkpoint.get("network_weights", checkpoint)
    weights = {_strip_prefixes(k): v for k, v in weights.items() if isinstance(v, torch.Tensor)}
    own = module.state_dict()
    matching = {k: v for k, v in weights.items() if k in own and tuple(v.shape) == tuple(own[k].shape)}
    if not matching:
        raise CheckpointError(
            f"No weight in {path} matches the network (same name and shape); is it a checkpoint of this architecture?"
        )
    module.load_state_dict(matching, strict=False)
    not_loaded = sorted(k for k in own if k not in matching)
    unused = sorted(k for k in weights if k not in matching)
    logger.info(
        "Pretrained weights from %s: loaded %d of %d tensors; %d kept their initialisation%s; %d in the file unused%s.",
        path,
        len(matching),
        len(own),
        len(not_loaded),
        f" (e.g. {', '.join(not_loaded[:5])})" if not_loaded else "",
        len(unused),
        f" (e.g. {', '.join(unused[:5])})" if unused else "",
    )
    return sorted(matching), not_loaded
