"""Presets: upstream trainer names (``-tr BaseMAETrainer_BS8``) as data, resolved into a :class:`RunConfig`.

A :class:`Preset` names a method, an architecture and a few dotted-key overrides, and may inherit from a
``base`` preset (the child's method/architecture replace the base's when given; overrides are merged,
child last). Resolution starts from the defaults of :mod:`nnssl.config` and the method's ``config_cls``,
applies the preset chain root first, then the command-line overrides.

Upstream's one-liner subclasses become generated names: ``<base>_BS<b>`` for every batch size upstream
used and ``<base>_BS8_<n>ep`` for every epoch count, for both the CNN (``BaseMAETrainer``, ResEnc-L) and
the Primus (``BaseEvaMAETrainer``, Primus-M) families. ``DemoMAE_*`` presets are tiny CPU runs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from nnssl.config import DataConfig, OptimConfig, RunConfig, TrainConfig
from nnssl.methods import METHODS
from nnssl.overrides import ConfigError, apply_overrides
from nnssl.registry import Registry

DEFAULT_PRESET = "BaseMAETrainer"

#: Batch sizes and epoch counts of upstream's variant classes (upstream-nnssl.md 5.5).
UPSTREAM_BATCH_SIZES = (1, 2, 4, 6, 7, 8, 10, 16, 24, 28, 32)
UPSTREAM_EPOCHS = (5, 100, 250, 500, 1000, 2000, 3000, 4000)


@dataclass(frozen=True)
class Preset:
    """A named run recipe: method, architecture and overrides, optionally on top of ``base``."""

    name: str
    method: str | None = None
    architecture: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    base: str | None = None
    description: str = ""


PRESETS: Registry[Preset] = Registry("preset")


def add_preset(preset: Preset) -> Preset:
    """Register ``preset`` (its base must already be registered)."""
    if preset.base is not None and preset.base not in PRESETS:
        raise KeyError(f"Preset '{preset.name}' inherits from unknown preset '{preset.base}'.")
    if preset.base is None and (preset.method is None or preset.architecture is None):
        raise ValueError(f"Preset '{preset.name}' has no base, so it must name a method and an architecture.")
    PRESETS.add(preset.name, preset)
    return preset


def preset_chain(name: str) -> list[Preset]:
    """The preset named ``name`` and its ancestors, root first."""
    chain = [PRESETS.get(name)]
    while chain[-1].base is not None:
        chain.append(PRESETS.get(chain[-1].base))
    return chain[::-1]


def flatten_preset(name: str) -> tuple[str, str, dict[str, Any]]:
    """``(method, architecture, merged overrides)`` of a preset after inheritance."""
    method = architecture = None
    overrides: dict[str, Any] = {}
    for preset in preset_chain(name):
        method = preset.method or method
        architecture = preset.architecture or architecture
        overrides.update(preset.overrides)
    assert method is not None and architecture is not None
    return method, architecture, overrides


def resolve_config(preset_name: str, overrides: Sequence[str] = (), method_config_cls: type | None = None) -> RunConfig:
    """The :class:`RunConfig` of ``preset_name`` with command-line ``overrides`` (``"a.b=c"``) applied.

    ``method_cfg`` is an instance of the method's ``config_cls`` (``method_config_cls`` replaces the
    registry lookup, for methods that are not registered). Unknown keys raise :class:`ConfigError`.
    """
    method, architecture, preset_overrides = flatten_preset(preset_name)
    if method_config_cls is None:
        if method not in METHODS:
            raise ConfigError(
                f"Preset '{preset_name}' uses method '{method}', which is not registered "
                f"(registered methods: {', '.join(METHODS.names()) or 'none'})."
            )
        method_config_cls = METHODS.get(method).config_cls
    cfg = RunConfig(
        preset=preset_name,
        method=method,
        architecture=architecture,
        train=TrainConfig(),
        optim=OptimConfig(),
        data=DataConfig(),
        method_cfg=method_config_cls(),
    )
    try:
        cfg = apply_overrides(cfg, preset_overrides)
    except ConfigError as err:
        raise ConfigError(f"Preset '{preset_name}' is inconsistent: {err}") from None
    return apply_overrides(cfg, list(overrides))


def config_from_dict(d: dict[str, Any]) -> RunConfig:
    """Rebuild a :class:`RunConfig` from its JSON form (``config.json`` or a checkpoint's ``config``)."""
    method_cls = METHODS.get(d["method"])
    cfg = RunConfig(
        preset=d["preset"],
        method=d["method"],
        architecture=d["architecture"],
        method_cfg=method_cls.config_cls(),
    )
    flat = {f"{s}.{k}": v for s in ("train", "optim", "data") for k, v in d.get(s, {}).items()}
    flat.update({f"method.{k}": v for k, v in (d.get("method_cfg") or {}).items()})
    return apply_overrides(cfg, flat)


def config_to_dict(cfg: RunConfig) -> dict[str, Any]:
    """The JSON form of ``cfg`` (tuples become lists)."""
    from nnssl.serialization import to_jsonable

    return to_jsonable(cfg)


#: Optimiser settings of upstream's Eva (Primus) family, shared by every Primus-M preset.
_EVA_OPTIM: dict[str, Any] = {
    "optim.name": "adamw",
    "optim.lr": 3e-4,
    "optim.weight_decay": 5e-2,
    "optim.betas": (0.9, 0.98),
    "optim.schedule": "warmup_poly",
    "optim.warmup_epochs": 50,
    "train.grad_clip": 1.0,
}
#: What the tiny Primus demo presets change on top of their family's Eva settings.
_PRIMUS_DEMO: dict[str, Any] = {"optim.lr": 1e-3, "optim.warmup_epochs": 1}


def _add_demo_pair(
    label: str, cnn_base: str, eva_base: str, overrides: dict[str, Any], cnn_text: str, eva_text: str
) -> None:
    """``Demo<label>_ResEncTiny`` on ``cnn_base`` and ``Demo<label>_PrimusTiny`` on ``eva_base``: CPU-sized runs."""
    add_preset(
        Preset(
            f"Demo{label}_ResEncTiny",
            base=cnn_base,
            architecture="ResEncTiny",
            overrides=dict(overrides),
            description=f"CPU demo: {cnn_text}",
        )
    )
    add_preset(
        Preset(
            f"Demo{label}_PrimusTiny",
            base=eva_base,
            architecture="PrimusTiny",
            overrides={**overrides, **_PRIMUS_DEMO},
            description=f"CPU demo: {eva_text}",
        )
    )


def _register_defaults() -> None:
    cnn = {
        "optim.name": "sgd",
        "optim.lr": 1e-2,
        "optim.momentum": 0.99,
        "optim.nesterov": True,
        "optim.weight_decay": 3e-5,
        "optim.schedule": "poly",
        "optim.poly_exponent": 0.9,
        "optim.warmup_epochs": 0,
        "train.grad_clip": 12.0,
        "train.batch_size": 2,
        "train.num_epochs": 1000,
        "train.iterations_per_epoch": 250,
        "train.val_iterations": 50,
        "train.patch_size": (160, 160, 160),
    }
    add_preset(
        Preset(
            "BaseMAETrainer",
            method="MAE",
            architecture="ResEncL",
            overrides=cnn,
            description="MAE on ResEnc-L, upstream CNN defaults (SGD, poly, 1000x250, batch 2, 160^3).",
        )
    )
    add_preset(
        Preset(
            "BaseEvaMAETrainer",
            base="BaseMAETrainer",
            architecture="PrimusM",
            overrides=dict(_EVA_OPTIM),
            description="MAE on Primus-M, upstream Eva defaults (AdamW 3e-4, 50 warm-up epochs, clip 1).",
        )
    )
    for family in ("BaseMAETrainer", "BaseEvaMAETrainer"):
        for bs in UPSTREAM_BATCH_SIZES:
            add_preset(
                Preset(
                    f"{family}_BS{bs}",
                    base=family,
                    overrides={"train.batch_size": bs},
                    description=f"{family} with total batch size {bs}.",
                )
            )
        for epochs in UPSTREAM_EPOCHS:
            overrides: dict[str, Any] = {"train.num_epochs": epochs}
            if family == "BaseEvaMAETrainer" and epochs <= 50:
                overrides["optim.warmup_epochs"] = max(1, epochs // 5)  # the 50 warm-up epochs would not fit
            add_preset(
                Preset(
                    f"{family}_BS8_{epochs}ep",
                    base=f"{family}_BS8",
                    overrides=overrides,
                    description=f"{family} with batch size 8 for {epochs} epochs.",
                )
            )
    demo = {
        "train.patch_size": (48, 48, 48),
        "train.batch_size": 2,
        "train.num_epochs": 12,
        "train.iterations_per_epoch": 20,
        "train.val_iterations": 4,
        "data.num_workers": 1,
        "data.num_val_subjects_min": 1,
    }
    _add_demo_pair(
        "MAE",
        "BaseMAETrainer",
        "BaseEvaMAETrainer",
        demo,
        "MAE on a tiny ResEnc, 48^3 patches, 12 epochs x 20 iterations.",
        "MAE on a tiny Primus, 48^3 patches, 12 epochs x 20 iterations, 1 warm-up epoch.",
    )
    _register_upstream_filter_presets()
    _register_aligned_mae()
    _register_dino()
    _register_simclr()
    _register_voco()


# ---------------------------------------------------------------------------------------------------------------
# Upstream's data-filter trainers (OpenMind ablations, MIC-DKFZ/nnssl BaseMAETrainer.py "MASKS & IQS"): batch 8 on
# BaseMAETrainer with ``data.filters``. ``iqs<=t`` keeps OpenMind image-quality scores <= t (1 best .. 5 worst).
#: preset name -> (data.filters, further overrides, what it trains on)
UPSTREAM_FILTER_PRESETS: dict[str, tuple[tuple[str, ...], dict[str, Any], str]] = {
    "BaseMAETrainer_BS8_IQS1_5": (("iqs<=1.5",), {}, "images with image-quality score <= 1.5"),
    "BaseMAETrainer_BS8_IQS2_5": (("iqs<=2.5",), {}, "images with image-quality score <= 2.5"),
    "BaseMAETrainer_BS8_IQS3_0": (("iqs<=3.0",), {}, "images with image-quality score <= 3.0"),
    "BaseMAETrainer_BS8_T1w_T2w_FLAIR": (("modality=T1w|T2w|FLAIR",), {}, "T1w, T2w and FLAIR images only"),
    "BaseMAETrainer_BS8_IQS3_5_FA": (
        ("modality=FA", "iqs<=3.5"),
        {"train.val_iterations": 5},
        "FA images with image-quality score <= 3.5, 5 validation iterations",
    ),
}


def _register_upstream_filter_presets() -> None:
    for name, (filters, extra, text) in UPSTREAM_FILTER_PRESETS.items():
        add_preset(
            Preset(
                name,
                base="BaseMAETrainer_BS8",
                overrides={"data.filters": filters, **extra},
                description=f"BaseMAETrainer with batch size 8 on {text} (data.filters={','.join(filters)}).",
            )
        )


# ---------------------------------------------------------------------------------------------------------------


def _register_aligned_mae() -> None:
    """AlignedMAE (CVA, methods.md 1.6): stage 2 after MAE, started with ``-pretrained_weights <MAE checkpoint>``.

    ``train.patch_size`` is the base patch the two overlapping crops are cut from (``2 p - round(0.4 p)``: 205
    for 128^3 crops, 256 for 160^3, so no overlap ever needs a redraw); the shared spatial augmentation
    (rotation/scale p 0.2, +-30 degrees as nnssl's MAE stage, mirroring) is applied to it by the sampler.
    """
    add_preset(
        Preset(
            "AlignedMAEFTTrainer",
            base="BaseMAETrainer",
            method="AlignedMAE",
            overrides={
                "train.patch_size": (205, 205, 205),
                "method.crop_size": (128, 128, 128),
                "train.batch_size": 4,
                "train.num_epochs": 250,
                "train.grad_clip": 12.0,
                "data.rotation_p": 0.2,
                "data.scale_p": 0.2,
                "data.mirror_axes": (0, 1, 2),
            },
            description="AlignedMAE (CVA) on ResEnc-L from an MAE checkpoint: 128^3 crops, 4 images, SGD, 250 epochs.",
        )
    )
    add_preset(
        Preset(
            "AlignedMAEFTLR3EvaTrainer",
            base="BaseEvaMAETrainer",
            method="AlignedMAE",
            overrides={
                "train.patch_size": (256, 256, 256),
                "method.crop_size": (160, 160, 160),
                "train.batch_size": 4,
                "train.num_epochs": 150,
                "optim.lr": 3e-4,
                "optim.warmup_epochs": 10,
                "train.grad_clip": 1.0,
                "data.rotation_p": 0.2,
                "data.scale_p": 0.2,
                "data.mirror_axes": (0, 1, 2),
            },
            description="AlignedMAE (CVA) on Primus-M from an MAE checkpoint: 160^3 crops, 4 images, AdamW 3e-4, "
            "10 warm-up epochs, 150 epochs.",
        )
    )
    variants = {
        "NoCon": ({"method.w_con": 0.0}, "without the global contrastive term"),
        "ConMAE": ({"method.w_cva": 0.0}, "MAE + global contrastive only (no view alignment)"),
        "Gram": ({"method.alignment": "gram", "method.w_cva": 2.0}, "with the Gram alignment loss (w 2.0)"),
        "AlignedConCon": (
            {"method.alignment": "contrastive", "method.w_cva": 0.2},
            "with the contrastive C-CVA alignment (w 0.2)",
        ),
    }
    names = {
        "AlignedMAEFTTrainer": {
            "NoCon": "AlignedMAEFTNoConTrainer",
            "ConMAE": "ConMAEFTTrainer",
            "Gram": "GramAlignedMAEFTTrainer",
            "AlignedConCon": "AlignedConConMAEFTTrainer",
        },
        "AlignedMAEFTLR3EvaTrainer": {
            "NoCon": "AlignedMAEFTNoConLR3EvaTrainer",
            "ConMAE": "ConMAEFTLR3EvaTrainer",
            "Gram": "GramAlignedMAEFTLR3EvaTrainer",
            "AlignedConCon": "AlignedConConMAEFTLR3EvaTrainer",
        },
    }
    for base, named in names.items():
        for key, name in named.items():
            overrides, text = variants[key]
            add_preset(Preset(name, base=base, overrides=overrides, description=f"{base} {text}."))
    demo = {
        "train.patch_size": (52, 52, 52),
        "method.crop_size": (32, 32, 32),
        "method.block_size": 8,
        "method.dense_grid": 8,
        "method.projector_hidden_dim": 128,
        "method.projector_dim": 128,
        "method.predictor_hidden_dim": 64,
        "train.batch_size": 2,
        "train.num_epochs": 12,
        "train.iterations_per_epoch": 20,
        "train.val_iterations": 4,
        "data.num_workers": 1,
        "data.num_val_subjects_min": 1,
    }
    _add_demo_pair(
        "AlignedMAE",
        "AlignedMAEFTTrainer",
        "AlignedMAEFTLR3EvaTrainer",
        demo,
        "AlignedMAE on a tiny ResEnc, 32^3 crops from 52^3 patches, 12 x 20 iterations.",
        "AlignedMAE on a tiny Primus, 32^3 crops from 52^3 patches, 1 warm-up epoch.",
    )


def _register_dino() -> None:
    """DINO family (methods.md 2.2 and the small-batch checklist of 2.5; documentation/dino.md).

    Small-batch defaults: K 8192 prototypes, Sinkhorn-Knopp centring (DINOTrainer: mean centring, m 0.9),
    teacher temperature 0.04 -> 0.07 over 30 epochs, prototype layer frozen (lr 0) for 5 epochs, an effective
    batch of 64 through gradient accumulation with lr = 0.004 * sqrt(B_eff / 1024) = 1e-3, AdamW, warm-up 10
    epochs then cosine to 1e-6, weight decay cosine 0.04 -> 0.2, clip 3, global crops 0.5-1 of the patch VOLUME.
    ``iterations_per_epoch`` counts optimizer steps: 32 steps x 8 micro-batches = 256 batches per epoch.
    The sampler adds only mirroring (the multi-crop transform does the cropping and intensity augmentation).
    """
    common = {
        "train.patch_size": (160, 160, 160),
        "train.batch_size": 8,
        "train.grad_accumulation_steps": 8,
        "train.num_epochs": 200,
        "train.iterations_per_epoch": 32,
        "train.val_iterations": 10,
        "train.grad_clip": 3.0,
        "optim.name": "adamw",
        "optim.lr": 4e-3,
        "optim.lr_scaling": "sqrt1024",
        "optim.betas": (0.9, 0.999),
        "optim.weight_decay": 0.04,
        "optim.weight_decay_end": 0.2,
        "optim.schedule": "warmup_cosine",
        "optim.warmup_epochs": 10,
        "optim.final_lr": 1e-6,
        "data.rotation_p": 0.0,
        "data.scale_p": 0.0,
        "data.mirror_axes": (0, 1, 2),
        "method.num_prototypes": 8192,
        "method.teacher_temp_start": 0.04,
        "method.teacher_temp_end": 0.07,
        "method.teacher_temp_warmup_epochs": 30,
        "method.freeze_last_layer_epochs": 5,
        "method.global_crop_scale": (0.5, 1.0),
        "method.local_crop_scale": (0.05, 0.3),
        "method.momentum_start": 0.992,
    }
    add_preset(
        Preset(
            "DINOv2EvaTrainer",
            method="DINO",
            architecture="PrimusM",
            overrides={
                **common,
                "method.global_crop_size": 96,
                "method.local_crop_size": 48,
                "method.num_local_crops": 8,
                "method.centering": "sinkhorn",
                "method.ibot": True,
                "method.koleo_weight": 0.1,
            },
            description="DINOv2 (DINO + iBOT + KoLeo) on Primus-M: 2x96^3 + 8x48^3 crops, K 8192, Sinkhorn, "
            "B_eff 64 (8 x 8 accumulation), lr 0.004*sqrt(64/1024).",
        )
    )
    add_preset(
        Preset(
            "DINOTrainer",
            base="DINOv2EvaTrainer",
            overrides={"method.ibot": False, "method.centering": "mean", "method.center_momentum": 0.9},
            description="DINO (CLS distillation + KoLeo, no iBOT) on Primus-M, mean centring m 0.9; else as "
            "DINOv2EvaTrainer.",
        )
    )
    add_preset(
        Preset(
            "DINOResEncTrainer",
            base="DINOv2EvaTrainer",
            architecture="ResEncL",
            overrides={
                "train.batch_size": 4,
                "train.grad_accumulation_steps": 16,
                "train.iterations_per_epoch": 16,
                "method.global_crop_size": 128,
                "method.local_crop_size": 64,
                "method.num_local_crops": 6,
                "method.ibot": False,
            },
            description="DINO + KoLeo on ResEnc-L (CLS = 1120-d multi-stage GAP, standardised with running "
            "statistics before the head; no iBOT): 2x128^3 + 6x64^3 crops, B_eff 64 (4 x 16 accumulation).",
        )
    )
    demo = {
        "train.patch_size": (48, 48, 48),
        "train.batch_size": 4,
        "train.grad_accumulation_steps": 2,
        "train.num_epochs": 12,
        "train.iterations_per_epoch": 10,
        "train.val_iterations": 2,
        "optim.lr": 2e-3,
        "optim.lr_scaling": "none",
        "optim.warmup_epochs": 1,
        "data.num_workers": 1,
        "data.num_val_subjects_min": 1,
        "method.num_prototypes": 1024,
        "method.head_hidden_dim": 256,
        "method.head_bottleneck_dim": 64,
        "method.global_crop_size": 32,
        "method.local_crop_size": 16,
        "method.num_local_crops": 2,
        "method.teacher_temp_warmup_epochs": 3,
        "method.freeze_last_layer_epochs": 1,
        "method.momentum_start": 0.99,
    }
    add_preset(
        Preset(
            "DemoDINO_PrimusTiny",
            base="DINOv2EvaTrainer",
            architecture="PrimusTiny",
            overrides=demo,
            description="CPU demo: DINOv2 (iBOT + KoLeo) on a tiny Primus, 2x32^3 + 2x16^3 crops, K 1024.",
        )
    )
    add_preset(
        Preset(
            "DemoDINO_ResEncTiny",
            base="DINOResEncTrainer",
            architecture="ResEncTiny",
            overrides={
                **demo,
                "train.batch_size": 2,
                "method.centering": "mean",
            },
            description="CPU demo: DINO + KoLeo on a tiny ResEnc, 2x32^3 + 2x16^3 crops, K 1024, mean centring (with "
            "4 teacher rows per step Sinkhorn forces targets over >= K/4 prototypes); CLS standardised ('auto').",
        )
    )


#: Contrastive views come from a plain crop of the volume (upstream's plain loader); mirroring and rot90 are
#: applied per view by the method's transform.
_NO_PATCH_AUGMENTATION: dict[str, Any] = {"data.rotation_p": 0.0, "data.scale_p": 0.0, "data.mirror_axes": ()}
_CONTRASTIVE_DEMO: dict[str, Any] = {
    "train.batch_size": 4,
    "train.num_epochs": 8,
    "train.iterations_per_epoch": 10,
    "train.val_iterations": 2,
    "data.num_workers": 1,
    "data.num_val_subjects_min": 1,
    "method.hidden_dim": 256,
    "method.out_dim": 128,
}


def _register_simclr() -> None:
    """SimCLR (methods.md 4.8): 192x192x64 patches (array-axis order, as upstream), 2 x 2 crops of 64^3 per image."""
    add_preset(
        Preset(
            "SimCLRTrainer",
            base="BaseMAETrainer",
            method="SimCLR",
            overrides={
                "train.patch_size": (192, 192, 64),
                "method.crop_size": (64, 64, 64),
                "train.grad_clip": 0.1,
                **_NO_PATCH_AUGMENTATION,
            },
            description="SimCLR on ResEnc-L: 64^3 crop pairs (>= 50% overlap per axis) from 192x192x64 patches, "
            "NT-Xent tau 0.5 with DDP-wide negatives, SGD, clip 0.1, batch 2.",
        )
    )
    add_preset(
        Preset(
            "SimCLRTrainer_BS32",
            base="SimCLRTrainer",
            overrides={"train.batch_size": 32},
            description="SimCLRTrainer with total batch size 32 (64 crop pairs, 126 negatives per row).",
        )
    )
    add_preset(
        Preset(
            "SimCLREvaTrainer",
            base="SimCLRTrainer",
            architecture="PrimusM",
            overrides=dict(_EVA_OPTIM),
            description="SimCLR on Primus-M (mean token -> projector), AdamW 3e-4, 50 warm-up epochs, clip 1.",
        )
    )
    demo = {**_CONTRASTIVE_DEMO, "train.patch_size": (48, 48, 48), "method.crop_size": (24, 24, 24)}
    _add_demo_pair(
        "SimCLR",
        "SimCLRTrainer",
        "SimCLREvaTrainer",
        {**demo, "train.grad_clip": 1.0},
        "SimCLR on a tiny ResEnc, 24^3 crops from 48^3 patches, 8 epochs x 10 iterations.",
        "SimCLR on a tiny Primus, 24^3 crops from 48^3 patches, 1 warm-up epoch.",
    )


def _register_voco() -> None:
    """VoCo (methods.md 4.5) with an EMA teacher: 256x256x64 patches = 4x4x1 base crops of 64^3, 4 targets."""
    add_preset(
        Preset(
            "VoCoTrainer",
            base="BaseMAETrainer",
            method="VoCo",
            overrides={
                "train.patch_size": (256, 256, 64),
                "method.crop_size": (64, 64, 64),
                "method.num_targets": 4,
                "train.grad_clip": None,
                **_NO_PATCH_AUGMENTATION,
            },
            description="VoCo on ResEnc-L with an EMA teacher: 16 base crops + 4 targets of 64^3 from 256x256x64 "
            "patches, SGD 1e-2, no clipping, batch 2.",
        )
    )
    add_preset(
        Preset(
            "VoCoEvaTrainer",
            base="VoCoTrainer",
            architecture="PrimusM",
            overrides=dict(_EVA_OPTIM),
            description="VoCo on Primus-M with an EMA teacher, AdamW 3e-4, 50 warm-up epochs, clip 1.",
        )
    )
    # The demo keeps upstream's 4x4x1 grid (16 bases; a target overlaps at most 4, so ~77% of the labels are 0 and
    # L_neg has entries): with 2x2x1 bases almost every target overlaps every base (~11% zero labels) and the
    # loss barely falls (documentation/contrastive.md, VoCo).
    demo = {**_CONTRASTIVE_DEMO, "train.patch_size": (64, 64, 16), "method.crop_size": (16, 16, 16)}
    demo["method.num_targets"] = 4
    _add_demo_pair(
        "VoCo",
        "VoCoTrainer",
        "VoCoEvaTrainer",
        demo,
        "VoCo on a tiny ResEnc, 4x4x1 base crops of 16^3 + 4 targets, 8 x 10 iterations.",
        "VoCo on a tiny Primus, 4x4x1 base crops of 16^3 + 4 targets, 1 warm-up epoch.",
    )


def preset_table() -> list[tuple[str, str, str, str]]:
    """``(name, method, architecture, description)`` for every preset, sorted by name."""
    rows = []
    for name in PRESETS.names():
        method, architecture, _ = flatten_preset(name)
        rows.append((name, method, architecture, PRESETS.get(name).description))
    return rows


def with_overrides(cfg: RunConfig, **sections: dict[str, Any]) -> RunConfig:
    """Convenience for code and tests: ``with_overrides(cfg, train={"num_epochs": 2})``."""
    flat = {f"{section}.{k}": v for section, values in sections.items() for k, v in values.items()}
    return apply_overrides(dataclasses.replace(cfg), flat)


_register_defaults()
