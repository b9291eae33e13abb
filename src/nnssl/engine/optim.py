"""Optimizers and per-iteration learning-rate schedules.

The learning rate is a pure function of the global iteration ``t`` (0-based; skipped non-finite steps
count) with ``T = num_epochs * iterations_per_epoch`` total iterations:

- ``poly`` (nnU-Net): ``lr(t) = lr0 * (1 - t / T) ** p`` with ``p = optim.poly_exponent`` (0.9).
- ``warmup_poly`` (upstream ``BaseEvaMAETrainer``): with ``W = warmup_epochs * iterations_per_epoch``,
  linear warm-up ``lr(t) = lr0 * (t + 1) / W`` for ``t < W``, then
  ``lr(t) = lr0 * (1 - (t - W) / (T - W)) ** p``.
- ``constant``: ``lr(t) = lr0``.
- ``warmup_cosine`` (DINO/DINOv2): linear warm-up as above, then
  ``lr(t) = lr_end + (lr0 - lr_end) * (1 + cos(pi * (t - W) / (T - W))) / 2`` with ``lr_end = optim.final_lr``.

Upstream stepped these per epoch; stepping per iteration gives the same curve, smoothly. ``t`` counts optimizer
steps: with gradient accumulation (``train.grad_accumulation_steps = k``) one step consumes ``k`` micro-batches
and ``iterations_per_epoch`` is the number of optimizer steps per epoch.

Learning-rate scaling for small effective batches (``optim.lr_scaling``): ``"sqrt1024"`` uses
``lr0 = optim.lr * sqrt(B_eff / 1024)`` with ``B_eff = train.batch_size * k`` (``batch_size`` is already the
total over all GPUs), the DINOv2 rule (0.004 * sqrt(B/1024)); ``"none"`` uses ``optim.lr`` as given.

Per-group modifiers honoured by :func:`apply_schedule` (a method sets them in ``param_groups``):
``lr_scale`` (multiplies the scheduled lr, e.g. layer-wise decay), ``freeze_epochs`` (lr = 0 while the epoch
``t // iterations_per_epoch`` is below it: DINO's frozen last layer; the optimizer state is kept, unlike removing
gradients) and ``wd_scale`` (the group's weight decay relative to ``optim.weight_decay``, set at build time; with
``optim.weight_decay_end`` the weight decay follows ``wd(t) = wd_end + (wd0 - wd_end) * (1 + cos(pi t / T)) / 2``
times that scale, so groups without weight decay keep none).
"""

from __future__ import annotations

import logging
import math

import torch
from torch import nn

from nnssl.config import OptimConfig, TrainConfig

logger = logging.getLogger(__name__)

LR_SCALINGS = ("none", "sqrt1024")


def effective_batch_size(train: TrainConfig) -> int:
    """Samples per optimizer step over all GPUs: ``train.batch_size * train.grad_accumulation_steps``."""
    return int(train.batch_size) * int(train.grad_accumulation_steps)


def base_lr(optim: OptimConfig, train: TrainConfig) -> float:
    """``optim.lr`` after ``optim.lr_scaling`` (see the module docstring)."""
    if optim.lr_scaling == "none":
        return optim.lr
    if optim.lr_scaling == "sqrt1024":
        return optim.lr * math.sqrt(effective_batch_size(train) / 1024.0)
    raise ValueError(f"Unknown optim.lr_scaling '{optim.lr_scaling}': use one of {', '.join(LR_SCALINGS)}.")


def lr_at(step: int, optim: OptimConfig, train: TrainConfig) -> float:
    """The learning rate for global optimizer step ``step`` (see the module docstring for the formulas)."""
    total = train.num_epochs * train.iterations_per_epoch
    step = min(max(step, 0), total - 1)
    lr0 = base_lr(optim, train)
    if optim.schedule == "constant":
        return lr0
    if optim.schedule == "poly":
        return lr0 * (1.0 - step / total) ** optim.poly_exponent
    if optim.schedule in ("warmup_poly", "warmup_cosine"):
        warmup = optim.warmup_epochs * train.iterations_per_epoch
        if step < warmup:
            return lr0 * (step + 1) / warmup
        progress = (step - warmup) / max(total - warmup, 1)
        if optim.schedule == "warmup_poly":
            return lr0 * (1.0 - progress) ** optim.poly_exponent
        return optim.final_lr + (lr0 - optim.final_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(
        f"Unknown schedule '{optim.schedule}' (optim.schedule): use poly, warmup_poly, warmup_cosine or constant."
    )


def weight_decay_at(step: int, optim: OptimConfig, train: TrainConfig) -> float:
    """Weight decay at optimizer step ``step``: constant, or a cosine to ``optim.weight_decay_end``."""
    if optim.weight_decay_end is None:
        return optim.weight_decay
    total = train.num_epochs * train.iterations_per_epoch
    progress = min(max(step, 0), total - 1) / max(total - 1, 1)
    end = optim.weight_decay_end
    return end + (optim.weight_decay - end) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_optimizer(param_groups: list[dict], optim: OptimConfig, device: torch.device | str) -> torch.optim.Optimizer:
    """SGD (Nesterov momentum) or AdamW (fused on CUDA) over the method's parameter groups.

    Every group gets ``wd_scale`` = its weight decay / ``optim.weight_decay`` (for the weight-decay schedule)
    unless the method set one.
    """
    device = torch.device(device)
    for group in param_groups:
        wd = float(group.get("weight_decay", optim.weight_decay))
        group.setdefault("wd_scale", wd / optim.weight_decay if optim.weight_decay else 0.0)
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


def set_lr(optimizer: torch.optim.Optimizer, lr: float, epoch: int | None = None) -> None:
    """Set every group's lr to ``lr * group["lr_scale"]``, or 0 while ``epoch < group["freeze_epochs"]``."""
    for group in optimizer.param_groups:
        frozen = epoch is not None and epoch < int(group.get("freeze_epochs", 0))
        group["lr"] = 0.0 if frozen else lr * float(group.get("lr_scale", 1.0))


def apply_schedule(optimizer: torch.optim.Optimizer, step: int, optim: OptimConfig, train: TrainConfig) -> float:
    """Set lr (with ``lr_scale``/``freeze_epochs``) and, if scheduled, weight decay for ``step``; returns lr(t)."""
    lr = lr_at(step, optim, train)
    set_lr(optimizer, lr, epoch=max(step, 0) // train.iterations_per_epoch)
    if optim.weight_decay_end is not None:
        wd = weight_decay_at(step, optim, train)
        for group in optimizer.param_groups:
            group["weight_decay"] = wd * float(group.get("wd_scale", 1.0))
    return lr


def log_lr_rule(optim: OptimConfig, train: TrainConfig, world_size: int = 1) -> None:
    """Log the learning-rate rule in force (effective batch and the scaled base lr)."""
    k = int(train.grad_accumulation_steps)
    if optim.lr_scaling == "none" and k == 1:
        return
    logger.info(
        "Effective batch B_eff = %d (batch_size %d over %d GPU(s) x %d accumulation steps); base lr %.4g "
        "(optim.lr %.4g, lr_scaling '%s').",
        effective_batch_size(train),
        train.batch_size,
        world_size,
        k,
        base_lr(optim, train),
        optim.lr,
        optim.lr_scaling,
    )


def trainable_parameters(module: nn.Module) -> list[nn.Parameter]:
    """Parameters with ``requires_grad`` (what gets clipped)."""
    return [p for p in module.parameters() if p.requires_grad]
