"""Weights-only export of a training checkpoint, for sharing and for nnU-Net fine-tuning.

A training checkpoint carries the optimizer state, the whole method (heads, EMA teachers) and the run's
history. The export keeps what fine-tuning reads: ``network_weights`` and ``nnssl_adaptation_plan`` (plus the
run's ``config``, unless left out), with a ``weights_checksum``:

* ``.pth``: a dict loadable with ``torch.load(path, weights_only=True)``, as nnU-Net's ``PretrainedTrainer`` and
  ``nnUNetv2_preprocess_like_nnssl`` read checkpoints; aliases (ResEnc-L's decoder holds the encoder) share their
  storage, so each tensor is stored once.
* ``.safetensors``: one tensor per distinct storage view; an alias is recorded in the metadata
  (``nnssl_aliases``: alias key -> stored key) together with ``nnssl_adaptation_plan`` and ``config`` as JSON.
  :func:`load_exported_weights` rebuilds the dict; nnU-Net does not read this format.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from nnssl.engine.checkpoint import (
    CheckpointError,
    load_checkpoint,
    save_checkpoint,
    tensor_checksum,
    tensor_view_key,
)

logger = logging.getLogger(__name__)

SAFETENSORS_FORMAT = "nnssl-weights"


def export_payload(checkpoint: dict[str, Any], include_config: bool = True) -> dict[str, Any]:
    """``network_weights`` + ``nnssl_adaptation_plan`` (+ ``config``) of a training checkpoint."""
    missing = [k for k in ("network_weights", "nnssl_adaptation_plan") if k not in checkpoint]
    if missing:
        raise CheckpointError(
            f"The checkpoint lacks {', '.join(missing)}: it was not written by nnssl_train (or is already stripped)."
        )
    payload = {
        "network_weights": checkpoint["network_weights"],
        "nnssl_adaptation_plan": checkpoint["nnssl_adaptation_plan"],
    }
    if include_config and "config" in checkpoint:
        payload["config"] = checkpoint["config"]
    return payload


def save_safetensors(payload: dict[str, Any], path: Path) -> None:
    """Write ``payload`` as safetensors: one tensor per distinct view, aliases and plans in the metadata."""
    from safetensors.torch import save_file

    from nnssl.serialization import atomic_path

    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    first_key: dict[tuple, str] = {}
    storages: set[int] = set()
    for key, value in payload["network_weights"].items():
        identity = tensor_view_key(value)
        if identity in first_key:
            aliases[key] = first_key[identity]
            continue
        first_key[identity] = key
        pointer = value.untyped_storage().data_ptr()
        # a view into a storage that another stored tensor uses would be refused by safetensors: copy it
        tensors[key] = value.detach().clone().contiguous() if pointer in storages else value.detach().contiguous()
        storages.add(pointer)
    metadata = {
        "format": SAFETENSORS_FORMAT,
        "nnssl_adaptation_plan": json.dumps(payload["nnssl_adaptation_plan"]),
        "nnssl_aliases": json.dumps(aliases),
        "weights_checksum": tensor_checksum({"network_weights": payload["network_weights"]}),
    }
    if "config" in payload:
        metadata["config"] = json.dumps(payload["config"])
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def load_exported_weights(path: str | Path) -> dict[str, Any]:
    """An exported file (``.pth`` or ``.safetensors``) as ``{"network_weights", "nnssl_adaptation_plan", ...}``."""
    path = Path(path)
    if path.suffix != ".safetensors":
        return load_checkpoint(path)
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
        weights = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 - safe_open is not a mapping
    if metadata.get("format") != SAFETENSORS_FORMAT:
        raise CheckpointError(f"{path} was not written by nnssl_export_weights (no '{SAFETENSORS_FORMAT}' metadata).")
    for alias, key in json.loads(metadata.get("nnssl_aliases", "{}")).items():
        weights[alias] = weights[key]
    weights = dict(sorted(weights.items()))
    if tensor_checksum({"network_weights": weights}) != metadata.get("weights_checksum"):
        raise CheckpointError(f"{path} is corrupted: its tensors do not match the stored checksum.")
    payload: dict[str, Any] = {
        "network_weights": weights,
        "nnssl_adaptation_plan": json.loads(metadata["nnssl_adaptation_plan"]),
    }
    if "config" in metadata:
        payload["config"] = json.loads(metadata["config"])
    return payload


def export_weights(checkpoint_path: str | Path, output: str | Path, include_config: bool = True) -> Path:
    """Write the weights-only export of ``checkpoint_path`` to ``output`` (``.pth`` or ``.safetensors``)."""
    checkpoint_path, output = Path(checkpoint_path), Path(output)
    if output.resolve() == checkpoint_path.resolve():
        raise CheckpointError(f"The export {output} would replace the checkpoint itself; choose another file name.")
    payload = export_payload(load_checkpoint(checkpoint_path), include_config)
    if output.suffix == ".safetensors":
        save_safetensors(payload, output)
    else:
        save_checkpoint(payload, output)
    logger.info(
        "Exported %d weight tensors of %s to %s (%.1f MiB; the checkpoint has %.1f MiB).",
        len(payload["network_weights"]),
        checkpoint_path,
        output,
        output.stat().st_size / 2**20,
        checkpoint_path.stat().st_size / 2**20,
    )
    return output
