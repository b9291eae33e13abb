"""Typed run configuration: the engine's, the optimizer's and the data path's settings, and their checks.

A method's own hyper-parameters live in its ``config_cls`` dataclass, addressed as ``method.<field>``.
Presets (:mod:`nnssl.presets`) and command-line overrides (``--set section.field=value``) change fields by
dotted key; an unknown key is an error.

Validation. Every configuration class has a ``validate(run)`` hook (``run`` is the whole :class:`RunConfig`, for
checks that span sections) that raises :class:`ConfigError` naming the key, the value and what is allowed.
:meth:`RunConfig.validate` runs the hooks of ``train``, ``optim``, ``data`` and the method's configuration;
:func:`nnssl.overrides.apply_overrides` calls it, so a bad value is refused when the configuration is resolved,
before any file or folder of a run exists.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


class ConfigError(ValueError):
    """A configuration key or value that cannot be applied; the message says which and why."""


def require(ok: bool, key: str, value: Any, allowed: str) -> None:
    """Raise :class:`ConfigError` ``'<key>' = <value> is not allowed: it must be <allowed>.`` unless ``ok``."""
    if not ok:
        raise ConfigError(f"'{key}' = {value!r} is not allowed: it must be {allowed}.")


def architecture_of(run: RunConfig) -> Any:
    """The :class:`~nnssl.architectures.spec.ArchitectureSpec` named by ``run.architecture`` (ConfigError if none),
    with the ``arch`` section's token size / width / depth / heads applied (:meth:`ArchConfig.resolve`)."""
    from nnssl.architectures import ARCHITECTURES

    try:
        spec = ARCHITECTURES.get(run.architecture)
    except KeyError as err:
        raise ConfigError(f"Preset '{run.preset}': {err.args[0]}") from None
    arch = getattr(run, "arch", None)
    return spec if arch is None else arch.resolve(spec)


def require_patch_multiple(run: RunConfig, key: str, sizes: int | Sequence[int]) -> None:
    """``sizes`` (an input the backbone sees: one side or three) must be positive multiples of the architecture's."""
    spec = architecture_of(run)
    m = spec.patch_multiple
    sides = (sizes,) if isinstance(sizes, int) else tuple(sizes)
    require(
        len(sides) in (1, 3) and all(int(s) > 0 and int(s) % m == 0 for s in sides),
        key,
        sizes,
        f"{'a positive multiple' if isinstance(sizes, int) else 'three positive multiples'} of {m} for {spec.name} "
        f"(e.g. {5 * m})",
    )


def require_mask_units(run: RunConfig, key: str, block_size: int, sizes: Sequence[int]) -> None:
    """``sizes`` must be whole numbers of mask units of the run's backbone family (voxel blocks of ``block_size`` on
    CNNs, tokens on transformers)."""
    from nnssl.backbones import family_of

    unit = family_of(architecture_of(run)).unit_for(architecture_of(run), block_size)
    require(
        all(int(s) % unit == 0 for s in sizes),
        key,
        block_size,
        f"mask units of {unit} voxels must tile {tuple(sizes)} on {run.architecture}",
    )


def require_fits(key: str, crop: Sequence[int], run: RunConfig) -> None:
    """A crop cut from the sampled patch must not be larger than ``train.patch_size`` on any axis."""
    patch = tuple(run.train.patch_size)
    require(
        len(crop) == 3 and all(int(c) <= int(p) for c, p in zip(crop, patch)),
        key,
        tuple(crop),
        f"at most train.patch_size={patch} on every axis (the crops are cut from that patch)",
    )


PRECISIONS = ("auto", "bf16", "fp16", "fp32")
OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("poly", "warmup_poly", "warmup_cosine", "constant")
LR_SCALINGS = ("none", "sqrt1024")
TRACKERS = ("tensorboard", "wandb")
WANDB_MODES = ("offline", "online", "disabled")


@dataclass
class TrainConfig:
    """The loop: upstream defaults are 1000 epochs x 250 iterations, 50 validation iterations, batch 2.

    ``iterations_per_epoch`` counts optimizer steps; with ``grad_accumulation_steps = k`` every step consumes
    ``k`` micro-batches of ``batch_size`` (the total over all GPUs), so the effective batch is ``k * batch_size``.
    ``compile`` wraps the model in ``torch.compile`` (upstream's ``nnUNet_compile``). ``save_checkpoints=False``
    writes no checkpoint at all (upstream's ``--disable_checkpointing``). ``trackers`` adds TensorBoard and/or
    Weights & Biases sinks to ``metrics.jsonl`` (optional extras ``nnssl[tensorboard]``, ``nnssl[wandb]``);
    ``wandb_mode`` is ``offline`` unless set otherwise. ``eval_every_n_epochs`` > 0 probes a frozen copy of the
    backbone on the ``eval`` section's labelled set every that many epochs and after the last (0: never).
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
    compile: bool = False
    save_checkpoints: bool = True
    trackers: tuple[str, ...] = ()
    wandb_project: str = "nnssl"
    wandb_mode: str = "offline"
    eval_every_n_epochs: int = 0

    def validate(self, run: RunConfig) -> None:
        """Ranges and choices of the loop settings."""
        require(self.precision in PRECISIONS, "train.precision", self.precision, f"one of {', '.join(PRECISIONS)}")
        require(self.batch_size >= 1, "train.batch_size", self.batch_size, ">= 1")
        require(self.num_epochs >= 1, "train.num_epochs", self.num_epochs, ">= 1")
        require(self.iterations_per_epoch >= 1, "train.iterations_per_epoch", self.iterations_per_epoch, ">= 1")
        require(self.val_iterations >= 0, "train.val_iterations", self.val_iterations, ">= 0")
        require(
            len(self.patch_size) == 3 and all(p > 0 for p in self.patch_size),
            "train.patch_size",
            self.patch_size,
            "three positive sizes",
        )
        require(self.grad_clip is None or self.grad_clip > 0, "train.grad_clip", self.grad_clip, "> 0 or none")
        require(
            self.max_consecutive_nonfinite >= 1,
            "train.max_consecutive_nonfinite",
            self.max_consecutive_nonfinite,
            ">= 1",
        )
        require(self.save_every_epochs >= 1, "train.save_every_epochs", self.save_every_epochs, ">= 1")
        require(
            self.grad_accumulation_steps >= 1,
            "train.grad_accumulation_steps",
            self.grad_accumulation_steps,
            ">= 1 (1 disables accumulation)",
        )
        require(
            all(t in TRACKERS for t in self.trackers) and len(set(self.trackers)) == len(self.trackers),
            "train.trackers",
            self.trackers,
            f"empty or distinct names from {', '.join(TRACKERS)}",
        )
        require(self.wandb_mode in WANDB_MODES, "train.wandb_mode", self.wandb_mode, f"one of {', '.join(WANDB_MODES)}")
        require(
            self.eval_every_n_epochs >= 0,
            "train.eval_every_n_epochs",
            self.eval_every_n_epochs,
            ">= 0 (0: no evaluation during pre-training)",
        )


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

    def validate(self, run: RunConfig) -> None:
        """Choices, ranges, and a warm-up shorter than the run."""
        require(self.name in OPTIMIZERS, "optim.name", self.name, f"one of {', '.join(OPTIMIZERS)}")
        require(self.schedule in SCHEDULES, "optim.schedule", self.schedule, f"one of {', '.join(SCHEDULES)}")
        require(self.lr_scaling in LR_SCALINGS, "optim.lr_scaling", self.lr_scaling, f"one of {', '.join(LR_SCALINGS)}")
        require(self.lr > 0, "optim.lr", self.lr, "> 0")
        require(self.final_lr >= 0, "optim.final_lr", self.final_lr, ">= 0")
        require(self.weight_decay >= 0, "optim.weight_decay", self.weight_decay, ">= 0")
        require(
            self.weight_decay_end is None or self.weight_decay_end >= 0,
            "optim.weight_decay_end",
            self.weight_decay_end,
            ">= 0 or none",
        )
        require(0 <= self.momentum < 1, "optim.momentum", self.momentum, "in [0, 1)")
        require(all(0 <= b < 1 for b in self.betas), "optim.betas", self.betas, "two values in [0, 1)")
        require(self.poly_exponent > 0, "optim.poly_exponent", self.poly_exponent, "> 0")
        require(
            0 <= self.warmup_epochs < run.train.num_epochs or self.schedule not in ("warmup_poly", "warmup_cosine"),
            "optim.warmup_epochs",
            self.warmup_epochs,
            f"in [0, train.num_epochs={run.train.num_epochs})",
        )


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
    ``filters`` selects the images a run trains on (:mod:`nnssl.data.filters`): ``modality=T1w|T2w|FLAIR`` keeps
    those modalities, ``iqs<=2.5`` images with OpenMind image-quality score <= 2.5 (``iqs<=2.5|unknown`` also
    those without a score); an image must pass every filter.
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
    filters: tuple[str, ...] = ()

    def validate(self, run: RunConfig) -> None:
        """Worker count, probabilities, ranges and the filter specifications."""
        from nnssl.data.filters import FilterSpecError, parse_filter_spec

        require(self.num_workers >= 0, "data.num_workers", self.num_workers, ">= 0 (0 loads in the main process)")
        for key in ("rotation_p", "scale_p", "anatomy_crop_p"):
            value = getattr(self, key)
            require(0.0 <= value <= 1.0, f"data.{key}", value, "a probability in [0, 1]")
        require(self.rotation_max_degrees >= 0, "data.rotation_max_degrees", self.rotation_max_degrees, ">= 0")
        require(0 < self.scale_range[0] <= self.scale_range[1], "data.scale_range", self.scale_range, "0 < low <= high")
        require(
            all(a in (0, 1, 2) for a in self.mirror_axes) and len(set(self.mirror_axes)) == len(self.mirror_axes),
            "data.mirror_axes",
            self.mirror_axes,
            "distinct axes from 0, 1, 2 (empty: no mirroring)",
        )
        require(
            0 <= self.interpolation_order <= 5,
            "data.interpolation_order",
            self.interpolation_order,
            "a spline order in 0..5 (1: trilinear, 3: cubic)",
        )
        require(self.num_val_subjects_min >= 0, "data.num_val_subjects_min", self.num_val_subjects_min, ">= 0")
        require(
            self.spatial_augmentation_device in ("cpu", "cuda"),
            "data.spatial_augmentation_device",
            self.spatial_augmentation_device,
            "'cpu' or 'cuda'",
        )
        require(
            0.0 <= self.max_unreadable_fraction <= 1.0,
            "data.max_unreadable_fraction",
            self.max_unreadable_fraction,
            "a fraction in [0, 1]",
        )
        for spec in self.filters:
            try:
                parse_filter_spec(spec)
            except FilterSpecError as err:
                raise ConfigError(f"'data.filters': {err}") from None


#: Scores that ``eval.select_best_by`` may name besides the validation loss (higher is better).
EVAL_SCORES = ("probe/mean_dice", "registration/mean_dice")


@dataclass
class EvalConfig:
    """Evaluation during pre-training (runs when ``train.eval_every_n_epochs`` > 0; documentation/evaluation.md).

    ``set``: the labelled evaluation-set JSON (``demo``: the set shipped with nnssl). The dense linear probe of
    :mod:`nnssl.evaluation` runs on rank 0 on a frozen copy of the backbone, with features by sliding window
    (``overlap``, ``window_batch`` windows per pass, encoder ``stages``; empty: the native dense stage) and
    ``max_voxels`` training voxels. ``select_best_by``: what ``checkpoint_best.pth`` is chosen by, ``val_loss``
    (lowest) or a score of :data:`EVAL_SCORES` (highest).

    ``registration_set``: an evaluation-set JSON with ``pairs`` (``demo_registration``: the shipped pair); every pair
    is registered with the backbone's features and ConvexAdam (:mod:`nnssl.registration`, documentation/
    registration.md) and scored by the Dice of warped labels (``registration/mean_dice``). Its images are prepared
    with the run's plan, at ``registration_spacing`` mm when > 0 (coarser is faster; 0: the plan's spacing).
    """

    set: str = ""
    select_best_by: str = "val_loss"
    overlap: float = 0.25
    window_batch: int = 2
    stages: tuple[int, ...] = ()
    max_voxels: int = 50_000
    registration_set: str = ""
    registration_spacing: float = 0.0

    def validate(self, run: RunConfig) -> None:
        """Choices and ranges; a set is required when evaluation is on or a score selects the best checkpoint."""
        choices = ("val_loss", *EVAL_SCORES)
        require(
            self.select_best_by in choices, "eval.select_best_by", self.select_best_by, f"one of {', '.join(choices)}"
        )
        require(0.0 <= self.overlap < 1.0, "eval.overlap", self.overlap, "in [0, 1)")
        require(self.window_batch >= 1, "eval.window_batch", self.window_batch, ">= 1")
        require(self.max_voxels >= 100, "eval.max_voxels", self.max_voxels, ">= 100")
        require(all(s >= 0 for s in self.stages), "eval.stages", self.stages, "stage indices >= 0")
        require(self.registration_spacing >= 0, "eval.registration_spacing", self.registration_spacing, ">= 0 mm")
        evaluating = run.train.eval_every_n_epochs > 0
        require(
            bool(self.set or self.registration_set) or not evaluating,
            "eval.set",
            self.set,
            "an evaluation-set JSON (or 'demo') when train.eval_every_n_epochs > 0 (or eval.registration_set)",
        )
        if evaluating:
            from nnssl.evaluation.eval_set import EvalSetError, load_eval_set

            for key, value in (("eval.set", self.set), ("eval.registration_set", self.registration_set)):
                if not value:
                    continue
                try:
                    loaded = load_eval_set(value)
                except EvalSetError as err:
                    raise ConfigError(f"'{key}' = {value!r} cannot be used: {err}") from None
                require(
                    key == "eval.set" or bool(loaded.pairs),
                    key,
                    value,
                    "a set with 'pairs' to register (e.g. demo_registration)",
                )
        needed = {
            "probe/mean_dice": ("eval.set", self.set),
            "registration/mean_dice": ("eval.registration_set", self.registration_set),
        }
        if self.select_best_by in needed:
            key, value = needed[self.select_best_by]
            reason = f"set, because eval.select_best_by is {self.select_best_by}"
            require(bool(value) or not evaluating, key, value, reason)
        require(
            self.select_best_by == "val_loss" or evaluating,
            "eval.select_best_by",
            self.select_best_by,
            "val_loss unless train.eval_every_n_epochs > 0 (a score needs the evaluation to run)",
        )


@dataclass
class ArchConfig:
    """Shape of a transformer architecture (``--set arch.token_size=4``); ``None`` keeps the entry's own.

    ``token_size``: side of the cubic patch embedding (a power of two; every side of ``train.patch_size`` and of the
    network's input must be a multiple), ``embed_dim``, ``depth`` (Eva blocks) and ``num_heads`` (``embed_dim`` a
    multiple of ``6 * num_heads``: the 3D RoPE needs ``embed_dim / num_heads / 1.5`` divisible by 4). Primus entries
    only; a changed shape is built as dna's generic ``Primus`` class with ``arch_kwargs`` and rebuilt that way by
    nnU-Net (:func:`nnssl.architectures.primus.primus_variant`). Leaving every key at ``None`` keeps the registered
    entry exactly (``PrimusM`` stays ``PrimusM``).
    """

    token_size: int | None = None
    embed_dim: int | None = None
    depth: int | None = None
    num_heads: int | None = None

    def is_default(self) -> bool:
        return all(getattr(self, k) is None for k in ("token_size", "embed_dim", "depth", "num_heads"))

    def resolve(self, spec: Any) -> Any:
        """``spec`` with these settings applied (ConfigError naming the key when they cannot be)."""
        if self.is_default():
            return spec
        from nnssl.architectures.primus import primus_variant

        if spec.family != "transformer":
            key = next(f"arch.{k}" for k in ("token_size", "embed_dim", "depth", "num_heads") if getattr(self, k))
            raise ConfigError(
                f"'{key}' = {getattr(self, key[5:])!r} is not allowed: it must be none on {spec.name} (arch.* keys "
                "shape transformer architectures: PrimusS/B/M/L, PrimusTiny)."
            )
        try:
            return primus_variant(spec, self.token_size, self.embed_dim, self.depth, self.num_heads)
        except ValueError as err:
            raise ConfigError(str(err)) from None

    def validate(self, run: RunConfig) -> None:
        """Positive sizes, a buildable Primus shape, a token size that divides ``train.patch_size``."""
        for key in ("token_size", "embed_dim", "depth", "num_heads"):
            value = getattr(self, key)
            require(value is None or value >= 1, f"arch.{key}", value, ">= 1 or none (the architecture's own)")
        spec = architecture_of(run)
        if self.token_size is not None:
            require(
                all(int(p) % self.token_size == 0 for p in run.train.patch_size),
                "arch.token_size",
                self.token_size,
                f"a divisor of every side of train.patch_size={tuple(run.train.patch_size)} ({spec.name})",
            )


@dataclass
class RunConfig:
    """Everything a run needs besides the data: written to the run folder and into checkpoints."""

    preset: str
    method: str
    architecture: str
    train: TrainConfig = field(default_factory=TrainConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    method_cfg: Any = None
    arch: ArchConfig = field(default_factory=ArchConfig)

    def validate(self) -> None:
        """Run every section's ``validate(run)`` hook (the method's too, when its configuration class has one)."""
        self.train.validate(self)
        self.optim.validate(self)
        self.data.validate(self)
        self.eval.validate(self)
        self.arch.validate(self)
        hook = getattr(self.method_cfg, "validate", None)
        if callable(hook):
            hook(self)
