"""Typed run configuration: the engine's, the optimizer's and the data path's settings.

A method's own hyper-parameters live in its ``config_cls`` dataclass, addressed as ``method.<field>``.
Presets (``presets.py``) and command-line overrides (``--set section.field=value``) change fields by
dotted key; an unknown key is an error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class TrainConfig:
    """The loop: upstream defaults are 1000 epochs x 250 iterations, 50 validation iterations, batch 2."""

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


@dataclass
class OptimConfig:
    """Optimizer and per-iteration learning-rate schedule (``poly`` or ``warmup_poly``)."""

    name: str = "sgd"
    lr: float = 1e-2
    weight_decay: float = 3e-5
    momentum: float = 0.99
    nesterov: bool = True
    betas: tuple[float, float] = (0.9, 0.98)
    schedule: str = "poly"
    poly_exponent: float = 0.9
    warmup_epochs: int = 0


@dataclass
class DataConfig:
    """Sampling and the default spatial augmentation (upstream MAE: rotation and scale p=0.2, mirroring)."""

    num_workers: int = 2
    rotation_p: float = 0.2
    rotation_max_degrees: float = 30.0
    scale_p: float = 0.2
    scale_range: tuple[float, float] = (0.7, 1.4)
    mirror_axes: tuple[int, ...] = (0, 1, 2)
    anatomy_crop_p: float = 0.0
    num_val_subjects_min: int = 5


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
