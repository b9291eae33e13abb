"""Mixed precision: which autocast dtype to use and the matching gradient scaler.

``train.precision``: ``auto`` picks bf16 on CUDA devices that support it, fp16 on older CUDA devices,
and full precision (fp32) on CPU and MPS. ``fp16`` uses a dynamic loss scale (``GradScaler``); bf16 and
fp32 need none.
"""

from __future__ import annotations

import contextlib

import torch


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """``"bf16"``, ``"fp16"`` or ``"fp32"`` for the requested ``precision`` on ``device``."""
    device = torch.device(device)
    if precision == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise ValueError(f"train.precision=fp16 needs a CUDA device (got {device.type}); use bf16, fp32 or auto.")
    if precision not in ("bf16", "fp16", "fp32"):
        raise ValueError(f"train.precision must be auto, bf16, fp16 or fp32, got '{precision}'.")
    return precision


def autocast(mode: str, device: torch.device | str) -> contextlib.AbstractContextManager:
    """The autocast context for ``mode`` (a null context for fp32)."""
    device = torch.device(device)
    if mode == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if mode == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def make_grad_scaler(mode: str, device: torch.device | str) -> torch.amp.GradScaler:
    """A GradScaler that is enabled only for fp16 (disabled it passes ``step`` straight through)."""
    device = torch.device(device)
    return torch.amp.GradScaler(device.type if device.type == "cuda" else "cpu", enabled=mode == "fp16")
