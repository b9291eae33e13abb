"""The EMA teacher of every teacher-student method (VoCo, DINO, AlignedMAE): :class:`EMATeacher`.

Exponential moving average of the student's parameters (methods.md 0.5; Tarvainen & Valpola 2017,
"Mean teachers are better role models"; Grill et al. 2020, BYOL; Caron et al. 2021, DINO):

    theta_T <- m * theta_T + (1 - m) * theta_S          (after every optimizer step)

Only parameters are averaged; buffers (e.g. BatchNorm running statistics) are *not* touched, as in the
CVA, DINOv2 and AIM references. The update runs under ``torch.no_grad`` and in fp32 (a half-precision
parameter is averaged in fp32 and cast back).

One component does it all (:class:`EMATeacher`): it is a copy of the student modules made with
:func:`make_teacher` (``requires_grad=False``, always in eval mode, whatever ``method.train()`` says: no drop-path,
dropout or BatchNorm running-statistics updates), updated with a constant or cosine momentum schedule after every
optimizer step, re-copied from the student when pretrained weights are loaded (``-pretrained_weights``: teacher =
loaded student at step 0, methods.md 0.5), saved and restored with the method's state, and ignored by
DistributedDataParallel (every rank applies the same EMA update to the same, already synchronised student, so the
teachers stay identical). :class:`nnssl.methods.base.SSLMethod` finds every ``EMATeacher`` among its submodules and
does the updating, re-copying and DDP bookkeeping; a method only creates one and runs it under ``torch.no_grad()``.
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


class EMATeacher(nn.Module):
    """EMA copy of ``student`` (a module, or a ``ModuleDict`` of the student modules it mirrors).

    ``momentum`` is ``m0``; with ``final_momentum`` the momentum follows :func:`cosine_momentum` from ``m0`` to
    that value over the run's optimizer steps (DINO: 0.992 -> 1), otherwise it is constant (VoCo 0.9, CVA 0.995).
    The student is held by reference only (not registered), so its parameters are neither saved twice nor moved
    twice; indexing (``teacher["projector"]``) and calling go to the copy.
    """

    def __init__(self, student: nn.Module, momentum: float, final_momentum: float | None = None) -> None:
        super().__init__()
        for value in (momentum, final_momentum):
            if value is not None and not 0.0 <= value <= 1.0:
                raise ValueError(f"EMA teacher momentum must lie in [0, 1], got {value}.")
        self.module = make_teacher(student)
        self.__dict__["student"] = student
        self.momentum = float(momentum)
        self.final_momentum = None if final_momentum is None else float(final_momentum)
        self.train(False)

    def train(self, mode: bool = True) -> EMATeacher:
        return super().train(False)

    def momentum_at(self, step: int, total_steps: int) -> float:
        """The momentum used after optimizer step ``step`` of ``total_steps``."""
        if self.final_momentum is None:
            return self.momentum
        return cosine_momentum(step, total_steps, self.momentum, self.final_momentum)

    @torch.no_grad()
    def update(self, step: int, total_steps: int) -> float:
        """``theta_T <- m theta_T + (1 - m) theta_S`` with ``m = momentum_at(step, total_steps)``; returns ``m``."""
        momentum = self.momentum_at(step, total_steps)
        ema_update_(self.module, self.student, momentum)
        return momentum

    @torch.no_grad()
    def reset(self) -> None:
        """Teacher := student (parameters and buffers), e.g. after pretrained weights were loaded."""
        self.module.load_state_dict(self.student.state_dict())

    def __getitem__(self, key: str) -> nn.Module:
        return self.module[key]

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)
