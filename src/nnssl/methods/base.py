"""The contract between a pre-training method and the engine.

The engine owns the step (device, DDP, mixed precision, clipping, optimizer, schedule, NaN guard,
validation, checkpoints). A method owns its networks and heads, the transform that turns a sampled
crop into its views, and ``forward(batch) -> StepOutput``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from nnssl.architectures.spec import ArchitectureSpec

Sample = dict[str, Any]
Transform = Callable[[Sample], Sample]


@dataclass
class StepOutput:
    """A loss to minimise and detached scalar metrics to log."""

    loss: torch.Tensor
    metrics: dict[str, float] = field(default_factory=dict)


class SSLMethod(nn.Module):
    """Base class of every method.

    Subclasses set ``config_cls`` (a dataclass of the method's hyper-parameters, overridable as
    ``method.<field>`` on the command line) and implement :meth:`forward`. A sample handed to
    :meth:`train_transform` is ``{"image": float32 array (C, X, Y, Z)}`` plus the masks of
    :attr:`batch_masks` that the case stores (int8 arrays of shape (1, X, Y, Z)); the loader's collation
    stacks the returned arrays into batch tensors.
    """

    config_cls: ClassVar[type]
    #: The mask keys ("anatomy_mask", "anonymization_mask") that the method's transform or ``forward`` reads from a
    #: sample or batch. The loader carries only these, and only where the case stores them: a batch holds a key
    #: when at least one of its samples has that mask (the others are filled: anatomy 1, anonymization 0), so a
    #: method must treat a missing key as the fill value. Default: none.
    batch_masks: ClassVar[tuple[str, ...]] = ()

    def __init__(self, cfg: Any, arch: ArchitectureSpec, patch_size: tuple[int, int, int], in_channels: int = 1):
        super().__init__()
        self.cfg = cfg
        self.arch = arch
        self.patch_size = tuple(int(p) for p in patch_size)
        self.in_channels = in_channels

    def network_patch_size(self) -> tuple[int, ...]:
        """The input size the backbone sees (recorded as the adaptation plan's patch size).

        By default the sampled patch (``train.patch_size``); methods that cut smaller views from it
        (SimCLR, VoCo, DINO) return their view size.
        """
        return self.patch_size

    def train_transform(self) -> Transform | None:
        """Per-sample transform run in loader workers (views, masks); ``None`` passes samples through."""
        return None

    def val_transform(self) -> Transform | None:
        """Per-sample transform for validation; deterministic where possible."""
        return None

    def forward(self, batch: dict[str, torch.Tensor]) -> StepOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def backbone(self) -> nn.Module:
        """The network whose ``state_dict`` is saved as ``network_weights`` (keys match downstream)."""
        raise NotImplementedError

    def param_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        """Optimizer parameter groups; by default one group with every trainable parameter, as upstream."""
        return [{"params": [p for p in self.parameters() if p.requires_grad], "weight_decay": weight_decay}]

    def on_step_end(self, step: int, max_steps: int) -> None:
        """Called by the engine after every optimizer step (EMA teachers, schedules)."""

    def configure_schedule(self, steps_per_epoch: int, total_steps: int) -> None:
        """Called once by the engine before training or resuming, with the length of the run in optimizer steps.

        Methods with schedules of their own (DINO's teacher temperature and momentum) store it here.
        """

    def ddp_ignored_prefixes(self) -> tuple[str, ...]:
        """Attribute paths (e.g. ``("teacher",)``) whose parameters and buffers DDP must not synchronise.

        Used for EMA teachers: they receive no gradient and are updated identically on every rank, so DDP
        must neither broadcast nor all-reduce them. A name matches a prefix ``p`` when it equals ``p`` or
        starts with ``p + "."``.
        """
        return ()

    def on_pretrained_weights_loaded(self, path: str, loaded: Sequence[str], not_loaded: Sequence[str]) -> None:
        """Called by ``nnssl_train -pretrained_weights`` right after ``path`` was loaded into :meth:`backbone`.

        ``loaded`` / ``not_loaded`` are the backbone keys that were / were not taken from the file. Methods with
        an EMA teacher re-copy it here (teacher = pretrained student at step 0); others need nothing.
        """
