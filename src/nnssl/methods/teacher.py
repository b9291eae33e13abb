"""EMA teachers for teacher-student methods (VoCo here; DINO and AlignedMAE elsewhere).

Exponential moving average of the student's parameters (methods.md 0.5; Tarvainen & Valpola 2017,
"Mean teachers are better role models"; Grill et al. 2020, BYOL; Caron et al. 2021, DINO):

    theta_T <- m * theta_T + (1 - m) * theta_S          (after every optimizer step)

Only parameters are averaged; buffers (e.g. BatchNorm running statistics) are *not* touched, as in the
CVA, DINOv2 and AIM references. The update runs under ``torch.no_grad`` and in fp32 (a half-precision
parameter is averaged in fp32 and cast back).

Contract with the engine: a teacher is a submodule of the method (so ``method_state`` saves and restores
it exactly on resume) with ``requires_grad=False`` and in eval mode; the method lists its attribute name in
:meth:`nnssl.methods.base.SSLMethod.ddp_ignored_prefixes` so DistributedDataParallel neither broadcasts nor
all-reduces it (every rank applies the same EMA update to the same, already synchronised student, so the
teachers stay identical). Run teacher forwards under ``torch.no_grad()``. ``method.train()`` would put the
teacher back into train mode (drop-path, dropout, BatchNorm batch statistics); a method keeps it in eval
mode by overriding ``train`` (``super().train(mode); self.teacher.eval(); return self``), as
:class:`nnssl.methods.voco.VoCo` does.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn


def make_teacher(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` with ``requires_grad=False`` everywhere, in eval mode."""
    teacher = copy.deepcopy(module)
    for parameter in teacher.parameters():
        parameter.requires_grad_(False)
    return teacher.eval()


@torch.no_grad()
def ema_update_(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """In place: ``theta_T <- m theta_T + (1 - m) theta_S`` for every parameter (buffers untouched).

    Parameters are matched by name; a student parameter without teacher counterpart (or a shape mismatch)
    is an error, because the teacher must be a copy of the student's architecture.
    """
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"EMA momentum must lie in [0, 1], got {momentum}.")
    teacher_params = dict(teacher.named_parameters())
    for name, student_param in student.named_parameters():
        if name not in teacher_params:
            raise KeyError(f"EMA update: the teacher has no parameter '{name}'; build it with make_teacher(student).")
        target = teacher_params[name]
        if target.shape != student_param.shape:
            raise ValueError(
                f"EMA update: parameter '{name}' has shape {tuple(target.shape)} in the teacher and "
                f"{tuple(student_param.shape)} in the student."
            )
        updated = target.detach().float() * momentum + student_param.detach().float() * (1.0 - momentum)
        target.copy_(updated.to(target.dtype))


def cosine_momentum(step: int, max_steps: int, m0: float, m1: float = 1.0) -> float:
    """Cosine schedule from ``m0`` (step 0) to ``m1`` (step ``max_steps - 1``), as DINO/BYOL.

    ``m(t) = m1 - (m1 - m0) * (cos(pi * t / (T - 1)) + 1) / 2``; with one step or fewer it is ``m0``.
    Steps beyond the last are clamped.
    """
    if max_steps <= 1:
        return float(m0)
    t = min(max(int(step), 0), max_steps - 1) / (max_steps - 1)
    return float(m1 - (m1 - m0) * (math.cos(math.pi * t) + 1.0) / 2.0)
