"""The contract between a pre-training method and the engine.

The engine owns the step (device, DDP, mixed precision, clipping, optimizer, schedule, NaN guard,
validation, checkpoints). A method owns its networks and heads, the transform that turns a sampled
crop into its views, and ``forward(batch) -> StepOutput``. It reaches its network only through the backbone
interface (:mod:`nnssl.backbones`), and an EMA teacher only through :class:`nnssl.methods.teacher.EMATeacher`,
whose updates, re-copying and DDP bookkeeping this base class does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from nnssl.architectures.spec import ArchitectureSpec
from nnssl.backbones import Backbone
from nnssl.methods.teacher import EMATeacher

Sample = dict[str, Any]
Transform = Callable[[Sample], Sample]


#: Parameter-name endings that are never weight-decayed by :meth:`SSLMethod.decay_split_groups`.
NO_DECAY_SUFFIXES = ("pos_embed", "mask_token", "cls_token")


def no_weight_decay(name: str, parameter: torch.Tensor) -> bool:
    """Whether a parameter is a bias, a norm or layer-scale vector (ndim <= 1) or a positional embedding / token."""
    return parameter.ndim <= 1 or name.endswith(NO_DECAY_SUFFIXES)


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
    #: Module whose ``register()`` adds this method's presets (called once by :mod:`nnssl.presets`); None: none.
    presets_module: ClassVar[str | None] = None
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

    def min_images_per_batch(self) -> tuple[int, str]:
        """``(n, reason)``: the fewest images the global batch may hold for this method's loss to mean anything.

        The engine refuses a smaller ``train.batch_size`` before training starts, with ``reason`` in the message.
        """
        return 1, ""

    def train_transform(self) -> Transform | None:
        """Per-sample transform run in loader workers (views, masks); ``None`` passes samples through."""
        return None

    def val_transform(self) -> Transform | None:
        """Per-sample transform for validation; deterministic where possible."""
        return None

    def forward(self, batch: dict[str, torch.Tensor]) -> StepOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def backbone(self) -> nn.Module:
        """The network whose ``state_dict`` is saved as ``network_weights`` (keys match downstream).

        By default the ``network`` of the method's one :class:`nnssl.backbones.Backbone` (teachers' copies aside).
        """
        teachers = tuple(self.teachers())
        found = [
            module
            for name, module in self.named_modules()
            if isinstance(module, Backbone) and not any(name == t or name.startswith(t + ".") for t in teachers)
        ]
        if len(found) != 1:
            raise NotImplementedError(
                f"{type(self).__name__} has {len(found)} backbone interfaces outside its teachers; override backbone() "
                "to say which network the checkpoint stores."
            )
        return found[0].network

    def param_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        """Optimizer parameter groups; by default one group with every trainable parameter, as upstream."""
        return [{"params": [p for p in self.parameters() if p.requires_grad], "weight_decay": weight_decay}]

    def decay_split_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        """Two groups: weights with ``weight_decay``; biases, norms, layer-scales, positional embeddings and mask
        tokens without (MAE and DINOv2 practice; upstream nnssl decays everything). See :func:`no_weight_decay`."""
        decay, no_decay = [], []
        for name, param in self.named_parameters():
            if param.requires_grad:
                (no_decay if no_weight_decay(name, param) else decay).append(param)
        groups = [
            {"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0, "wd_scale": 0.0},
        ]
        return [g for g in groups if g["params"]]

    def layer_decay_groups(
        self,
        weight_decay: float,
        backbone: Backbone,
        backbone_prefix: str,
        layer_decay: float = 1.0,
        patch_embed_lr_mult: float = 1.0,
        freeze_epochs: Callable[[str], int] | None = None,
    ) -> list[dict[str, Any]]:
        """:meth:`decay_split_groups` with layer-wise lr decay and a patch-embedding lr multiplier (BEiT, Bao et al.
        2022; DINOv2's ``get_params_groups_with_decay``).

        A parameter of ``backbone`` (named ``backbone_prefix + name`` in this method) at layer ``i =
        backbone.layer_id(name)`` gets ``lr_scale = layer_decay ** (backbone.num_layers - i)``, times
        ``patch_embed_lr_mult`` when ``backbone.is_patch_embedding(name)``; every other parameter (heads) sits at the
        top, scale 1. ``freeze_epochs(full_name)`` (optional) gives a parameter's frozen epochs (lr 0, state kept).
        One group per (weight decay or not, layer, multiplier, frozen epochs); groups carry ``lr_scale``,
        ``layer_id``, ``weight_decay`` and ``wd_scale`` (0 for biases, norms, embeddings: :func:`no_weight_decay`).
        The engine multiplies the scheduled lr by ``lr_scale`` (:func:`nnssl.engine.optim.apply_schedule`).
        """
        top = backbone.num_layers
        groups: dict[tuple, dict[str, Any]] = {}
        for name, param in self.named_parameters():
            if not param.requires_grad:
                continue
            layer, scale = top, 1.0
            if name.startswith(backbone_prefix):
                inner = name[len(backbone_prefix) :]
                layer = backbone.layer_id(inner)
                scale = float(layer_decay) ** (top - layer)
                if backbone.is_patch_embedding(inner):
                    scale *= float(patch_embed_lr_mult)
            decay = not no_weight_decay(name, param)
            frozen = int(freeze_epochs(name)) if freeze_epochs is not None else 0
            key = (decay, layer, scale, frozen)
            if key not in groups:
                groups[key] = {
                    "params": [],
                    "weight_decay": weight_decay if decay else 0.0,
                    "lr_scale": scale,
                    "layer_id": layer,
                }
                if not decay:
                    groups[key]["wd_scale"] = 0.0
                if frozen:
                    groups[key]["freeze_epochs"] = frozen
            groups[key]["params"].append(param)
        return list(groups.values())

    def teachers(self) -> dict[str, EMATeacher]:
        """Every :class:`EMATeacher` among the submodules, by attribute path."""
        return {name: module for name, module in self.named_modules() if isinstance(module, EMATeacher)}

    def on_step_end(self, step: int, max_steps: int) -> None:
        """Called by the engine after every optimizer step; updates every EMA teacher (``EMATeacher.update``)."""
        for teacher in self.teachers().values():
            teacher.update(step, max_steps)

    def configure_schedule(self, steps_per_epoch: int, total_steps: int) -> None:
        """Called once by the engine before training or resuming, with the length of the run in optimizer steps.

        Methods with schedules of their own (DINO's teacher temperature) store it here.
        """

    def ddp_ignored_prefixes(self) -> tuple[str, ...]:
        """Attribute paths whose parameters and buffers DDP must not synchronise: every EMA teacher.

        Every rank applies the same EMA update to the same, already synchronised student, so DDP must neither
        broadcast nor all-reduce a teacher. A name matches a prefix ``p`` when it equals ``p`` or starts with
        ``p + "."``.
        """
        return tuple(self.teachers())

    def on_pretrained_weights_loaded(self, path: str, loaded: Sequence[str], not_loaded: Sequence[str]) -> None:
        """Called by ``nnssl_train -pretrained_weights`` right after ``path`` was loaded into :meth:`backbone`.

        ``loaded`` / ``not_loaded`` are the backbone keys that were / were not taken from the file. Every EMA teacher
        is re-copied from its student (teacher = pretrained student at step 0, methods.md 0.5); methods that load
        more (AlignedMAE: the MAE decoder) extend this and call ``super()``.
        """
        for teacher in self.teachers().values():
            teacher.reset()
