"""Optimizers and per-iteration learning-rate schedules.

The learning rate is a pure function of the global iteration ``t`` (0-based; skipped non-finite steps
count) with ``T = num_epochs * iterations_per_epoch`` total iterations:

- ``poly`` (nnU-Net): ``lr(t) = lr0 * (1 - t / T) ** p`` with ``p = optim.poly_exponent`` (0.9).
- ``warmup_poly`` (upstream ``BaseEvaMAETrainer``): with ``W = warmup_epochs * iterations_per_epoch``,
  linear warm-up ``lr(t) = lr0 * (t + 1) / W`` for ``t < W``, then
  ``lr(t) = lr0 * (1 - (t - W) / (T - W)) ** p``.
- ``constant``: ``lr(t) = lr0``.

Upstream stepped these per epoch; stepping per iteration gives the same curve, smoothly.
"""

from __future__ import annotations

import torch
from torch import nn

from nnssl.config import OptimConfig, TrainConfig


def lr_at(step: int, optim: OptimConfig, train: TrainConfig) -> float:
    """The learning rate for global iteration ``step`` (see the module docstring for the formulas)."""
    total = train.num_epochs * train.iterations_per_epoch
    step = min(max(step, 0), total - 1)
    if optim.schedule == "constant":
        return optim.lr
    if optim.schedule == "poly":
        return optim.lr * (1.0 - step / total) ** optim.poly_exponent
    if optim.schedule == "warmup_poly":
        warmup = optim.warmup_epochs * train.iterations_per_epoch
        if step < warmup:
            return optim.lr * (step + 1) / warmup
        return optim.lr * (1.0 - (step - warmup) / (total - warmup)) ** optim.poly_exponent
    raise ValueError(f"Unknown schedule '{optim.schedule}' (optim.schedule): use poly, warmup_poly or constant.")


def build_optimizer(param_groups: list[dict], optim: OptimConfig, device: torch.device | str) -> torch.optim.Optimizer:
    """SGD (Nesterov momentum) or AdamW (fused on CUDA) over the method's parameter groups."""
    device = torch.device(device)
    if optim.name == "sgd":
        return torch.optim.SGD(
            param_groups,
            lr=optim.lr,
            momentum=optim.momentum,
            nesterov=optim.nesterov and optim.momentum > 0,
            weight_decay=optim.weight_decay,
        )
    if optim.name == "adamw":
        return torch.optim.AdamW(
            param_groups,
            lr=optim.lr,
            betas=tuple(optim.betas),
            weight_decay=optim.weight_decay,
            fused=device.type == "cuda" or None,
        )
    raise ValueError(f"Unknown optimizer '{optim.name}' (optim.name): use sgd or adamw.")


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set the learning rate of every parameter group."""
    for group in optimizer.param_groups:
        group["lr"] = lr


def trainable_parameters(module: nn.Module) -> list[nn.Parameter]:
    """Parameters with ``requires_grad`` (what gets clipped)."""
    return [p for p in module.parameters() if p.requires_grad]
