"""Checkpoint files: atomic writes, each tensor stored once, checksums, resume selection, RNG state.

A checkpoint is a dict of tensors and plain Python values only, so the whole file loads with
``torch.load(path, weights_only=True)``. Keys: ``network_weights`` (the backbone's ``state_dict``,
unwrapped, keys as downstream nnU-Net expects), ``nnssl_adaptation_plan``, ``method_state`` (the whole
method incl. heads/teachers), ``optimizer_state``, ``grad_scaler_state``, ``current_epoch`` (the next epoch
to run), ``global_step``, ``epoch_progress`` (non-empty only for a mid-epoch stop), ``rng_state``,
``config`` (JSON form of the RunConfig), ``logging`` (per-epoch lists), ``best_val_loss`` and
``weights_checksum``.

Size. ``torch.save`` stores a storage once however many entries refer to it. :func:`cpu_state_dict` copies
the tensors of several state dicts to the CPU through one memo, so aliases stay aliases: the backbone inside
``method_state`` and ``network_weights``, and the duplicate module names of ResEnc-L (its decoder holds the
encoder) are written once. A checkpoint is therefore about weights + optimizer state.

Integrity. ``weights_checksum`` is the SHA-256 of every tensor in the payload (name, dtype, shape, bytes; each
storage view once); :func:`load_checkpoint` recomputes it and refuses a file whose tensors changed after it was
written (bit rot, a bad copy). Files are written through :func:`nnssl.serialization.atomic_path`; a failed
write leaves the previous file in place, and a full disk is reported as such (:class:`CheckpointError`).
A file that cannot be read is never deleted (upstream deleted it and restarted silently): the error names it.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import random
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from nnssl.serialization import TEMP_MARKER, atomic_path

logger = logging.getLogger(__name__)

RESUME_ORDER = ("checkpoint_final.pth", "checkpoint_latest.pth", "checkpoint_best.pth")
CHECKSUM_KEY = "weights_checksum"
CHECKSUM_ALGORITHM = "sha256"
#: Configuration entries that must match for ``--c`` to continue a run.
RESUME_MUST_MATCH = ("method", "architecture", "train.patch_size", "train.batch_size")


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be used; the message names the file and what to do."""


def tensor_view_key(t: torch.Tensor) -> tuple:
    """Identity of a tensor view: same storage, offset, shape, stride and dtype means the same values."""
    return (t.device, t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)


def cpu_state_dict(module: nn.Module, memo: dict[tuple, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``module.state_dict()`` copied to the CPU, one copy per distinct tensor view in ``memo``.

    Pass the same ``memo`` for every state dict of one checkpoint: entries that alias each other in memory
    (duplicate module names, a backbone that is also part of the method) then alias each other in the payload,
    and ``torch.save`` writes their storage once.
    """
    state = {}
    for key, value in module.state_dict().items():
        view = tensor_view_key(value)
        if view not in memo:
            memo[view] = value.detach().to("cpu", copy=True)
        state[key] = memo[view]
    return state


def _tensors(obj: Any, path: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor in a nested payload with its path, in a deterministic (sorted-key) order."""
    if isinstance(obj, torch.Tensor):
        yield path, obj
    elif isinstance(obj, Mapping):
        for key in sorted(obj, key=str):
            if not (path == "" and key == CHECKSUM_KEY):
                yield from _tensors(obj[key], f"{path}/{key}")
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            yield from _tensors(value, f"{path}/{i}")


def tensor_checksum(payload: Mapping[str, Any]) -> str:
    """SHA-256 over every tensor of ``payload``: its path, dtype and shape, and its bytes (each view hashed once)."""
    digest = hashlib.new(CHECKSUM_ALGORITHM)
    seen: set[tuple] = set()
    for path, tensor in _tensors(payload):
        digest.update(f"{path}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        view = tensor_view_key(tensor)
        if view in seen:
            continue
        seen.add(view)
        flat = tensor.detach().to("cpu").contiguous().reshape(-1)
        if flat.numel():
            digest.update(flat.view(torch.uint8).numpy().data)
    return digest.hexdigest()


def payload_bytes(payload: Mapping[str, Any]) -> int:
    """Bytes of tensor data ``torch.save`` writes for ``payload`` (each storage once)."""
    storages: dict[int, int] = {}
    for _, tensor in _tensors(payload):
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
    return sum(storages.values())


def _is_disk_full(err: BaseException, folder: Path, needed: int) -> bool:
    """An ENOSPC/EDQUOT error, or a failed write (torch's C++ writer hides errno) with less free space than needed."""
    chain: BaseException | None = err
    while chain is not None:
        if isinstance(chain, OSError) and chain.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        chain = chain.__cause__ or chain.__context__
    try:
        return shutil.disk_usage(folder).free < needed
    except OSError:
        return False


def _mib(n: int) -> str:
    return f"{n / 2**20:.0f} MiB"


def save_checkpoint(payload: dict[str, Any], path: str | Path) -> None:
    """Add ``weights_checksum``, ``torch.save`` to a temporary file beside ``path``, then rename.

    A failed write leaves any previous ``path`` untouched and removes the temporary file; a full disk raises
    :class:`CheckpointError` saying where, how much was needed and what was kept.
    """
    path = Path(path)
    payload[CHECKSUM_KEY] = {"algorithm": CHECKSUM_ALGORITHM, "value": tensor_checksum(payload)}
    try:
        with atomic_path(path) as tmp:
            torch.save(payload, tmp)
    except (OSError, RuntimeError) as err:
        needed = payload_bytes(payload)
        if not _is_disk_full(err, path.parent, needed):
            raise
        try:
            free = _mib(shutil.disk_usage(path.parent).free)
        except OSError:
            free = "unknown"
        kept = f"The previous {path.name} was kept" if path.is_file() else f"No earlier {path.name} exists"
        raise CheckpointError(
            f"{path.name} was not saved: no space left on {path.parent} (it needs about {_mib(needed)}; {free} "
            f"free). {kept}, and the partial file was removed. Free some space (or move the run folder to a larger "
            "disk and point $nnssl_results there), then continue with nnssl_train ... --c."
        ) from None


def verify_checksum(checkpoint: Mapping[str, Any], path: Path) -> None:
    """Raise :class:`CheckpointError` when the stored ``weights_checksum`` does not match the tensors."""
    stored = checkpoint.get(CHECKSUM_KEY)
    if not isinstance(stored, Mapping):
        return  # written before checksums existed, or not by nnssl
    if stored.get("algorithm") != CHECKSUM_ALGORITHM:
        logger.warning("%s: unknown checksum algorithm %r; not verified.", path, stored.get("algorithm"))
        return
    if tensor_checksum(checkpoint) != stored.get("value"):
        raise CheckpointError(
            f"{path} is corrupted: its tensors do not match the checksum stored when it was written (bit rot, an "
            "incomplete copy or a bad disk). The file was left in place. Restore it from a copy, or move it away: "
            "--c then continues from the most advanced remaining checkpoint."
        )


def load_checkpoint(path: str | Path, verify: bool = True) -> dict[str, Any]:
    """Load a checkpoint on CPU with ``weights_only=True`` and verify its checksum (when it has one).

    Unreadable or corrupted files raise :class:`CheckpointError` and are left in place.
    """
    path = Path(path)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any failure here means the file is unusable
        raise CheckpointError(
            f"Could not read checkpoint {path} ({type(err).__name__}: {err}). The file was left in place. "
            "If it is corrupted (e.g. the job was killed while copying it), move it away and run again; "
            "--c then uses the most advanced remaining checkpoint."
        ) from None
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"{path} does not hold a checkpoint dictionary (found {type(checkpoint).__name__}).")
    if verify:
        verify_checksum(checkpoint, path)
    return checkpoint


def peek_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint's dictionary, memory-mapped where possible (cheap for large files; not verified)."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - not every file can be memory-mapped; load_checkpoint explains failures
        checkpoint = load_checkpoint(path, verify=False)
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"{path} does not hold a checkpoint dictionary (found {type(checkpoint).__name__}).")
    return checkpoint


def checkpoint_progress(checkpoint: Mapping[str, Any]) -> tuple[int, int]:
    """``(global_step, current_epoch)`` of a checkpoint (older files without ``global_step``: 0)."""
    return int(checkpoint.get("global_step", 0)), int(checkpoint.get("current_epoch", 0))


def find_resume_checkpoint(folder: str | Path) -> Path | None:
    """The checkpoint ``--c`` continues from: the most advanced by ``global_step`` (ties: final > latest > best).

    Temporary files are ignored; a file that cannot be read raises :class:`CheckpointError` naming it (it might
    be the most advanced one, so it is not skipped silently).
    """
    best: tuple[tuple[int, int], Path] | None = None
    for rank, name in enumerate(RESUME_ORDER):
        candidate = Path(folder) / name
        if not candidate.is_file():
            continue
        step, _ = checkpoint_progress(peek_checkpoint(candidate))
        key = (step, -rank)
        if best is None or key > best[0]:
            best = (key, candidate)
    return None if best is None else best[1]


def remove_temporary_checkpoints(folder: str | Path) -> list[Path]:
    """Delete leftover ``checkpoint_*.nnssl_tmp-*`` files of a save that was killed; returns what was removed.

    Call it only while holding the run folder's lock (a running save of another process would look the same).
    """
    removed = []
    for leftover in sorted(Path(folder).glob(f"checkpoint_*{TEMP_MARKER}-*")):
        try:
            size = leftover.stat().st_size
            leftover.unlink()
        except FileNotFoundError:
            continue
        logger.warning("Removed %s (%s), left by a checkpoint save that was interrupted.", leftover, _mib(size))
        removed.append(leftover)
    return removed


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
