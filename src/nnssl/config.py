"""Typed run configuration: the engine's, the optimizer's and the data path's settings.

A method's own hyper-parameters live in its ``config_cls`` dataclass, addressed as ``method.<field>``.
Presets (:mod:`nnssl.presets`) and command-line overrides (``--set section.field=value``) change fields by
dotted key; an unknown key is an error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class TrainConfig:
    """The loop: upstream defaults are 1000 epochs x 250 iterations, 50 validation iterations, batch 2.

    ``iterations_per_epoch`` counts optimizer steps; with ``grad_accumulation_steps = k`` every step consumes
    ``k`` micro-batches of ``batch_size`` (the total over all GPUs), so the effective batch is ``k * batch_size``.
    """

    batch_size: int = 2
    num_epochs: int = 1000
    iterations_per_epoch: int = 250
    val_iterations: int = 50
    patch_size: tuple[int, int, int] = (160, 160, 160)
    grad_clip: float | None = 12.0
    precision: str = "auto"
    seed: int = 12345
    max_consecutive_nonfinite: int = 25
    save_every_epochs: int = 1
    grad_accumulation_steps: int = 1


@dataclass
class OptimConfig:
    """Optimizer and per-step learning-rate schedule (``poly``, ``warmup_poly``, ``warmup_cosine``, ``constant``).

    ``final_lr`` is the end value of ``warmup_cosine``; ``weight_decay_end`` (None: constant) makes the weight
    decay a cosine from ``weight_decay`` to that value; ``lr_scaling`` = ``"sqrt1024"`` multiplies ``lr`` by
    ``sqrt(B_eff / 1024)`` with ``B_eff = train.batch_size * train.grad_accumulation_steps`` (DINOv2's rule;
    ``"none"`` leaves it). See :mod:`nnssl.engine.optim`.
    """

    name: str = "sgd"
    lr: float = 1e-2
    weight_decay: float = 3e-5
    momentum: float = 0.99
    nesterov: bool = True
    betas: tuple[float, float] = (0.9, 0.98)
    schedule: str = "poly"
    poly_exponent: float = 0.9
    warmup_epochs: int = 0
    final_lr: float = 1e-6
    weight_decay_end: float | None = None
    lr_scaling: str = "none"


@dataclass
class DataConfig:
    """Sampling and the default spatial augmentation (upstream MAE: rotation and scale p=0.2, mirroring).

    ``interpolation_order`` is used for rotated or scaled images: 1 (trilinear, as nnU-Net's batchgeneratorsv2)
    or 3 (cubic spline, as upstream nnssl's batchgenerators v1; several times slower on the CPU). Masks use 0.

    ``spatial_augmentation_device``: ``"cpu"`` resamples rotated/scaled samples in the loader workers; ``"cuda"``
    sends their source regions to the training device and resamples them there (trilinear ``grid_sample``; needs
    ``-device cuda``, ``interpolation_order=1`` and a method without a per-sample transform, e.g. MAE).
    ``max_unreadable_fraction``: training skips cases that cannot be decoded, with a warning, and stops when more
    than this fraction of a loader's cases failed.
    """

    num_workers: int = 2
    rotation_p: float = 0.2
    rotation_max_degrees: float = 30.0
    scale_p: float = 0.2
    scale_range: tuple[float, float] = (0.7, 1.4)
    mirror_axes: tuple[int, ...] = (0, 1, 2)
    interpolation_order: int = 1
    anatomy_crop_p: float = 0.0
    num_val_subjects_min: int = 5
    spatial_augmentation_device: str = "cpu"
    max_unreadable_fraction: float = 0.05


@dataclass
class RunConfig:
    """Everything a run needs besides the data: written to the run folder and into checkpoints."""

    preset: str
    method: str
    architecture: str
    train: TrainConfig = field(default_factory=TrainConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    method_cfg: Any = None
