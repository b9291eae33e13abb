"""Contrastive presets: SimCLR and VoCo (upstream ``SimCLRTrainer``, ``VoCoTrainer`` and Eva variants), CPU demos."""

from __future__ import annotations

from typing import Any

from nnssl.presets import Preset, add_preset
from nnssl.presets.common import EVA_OPTIM, NO_PATCH_AUGMENTATION, add_demo_pair

#: The loop and head sizes of the contrastive CPU demos.
CONTRASTIVE_DEMO: dict[str, Any] = {
    "train.batch_size": 4,
    "train.num_epochs": 8,
    "train.iterations_per_epoch": 10,
    "train.val_iterations": 2,
    "method.hidden_dim": 256,
    "method.out_dim": 128,
}


def register_simclr() -> None:
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
                **NO_PATCH_AUGMENTATION,
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
            overrides=dict(EVA_OPTIM),
            description="SimCLR on Primus-M (mean token -> projector), AdamW 3e-4, 50 warm-up epochs, clip 1.",
        )
    )
    demo = {**CONTRASTIVE_DEMO, "train.patch_size": (48, 48, 48), "method.crop_size": (24, 24, 24)}
    add_demo_pair(
        "SimCLR",
        "SimCLRTrainer",
        "SimCLREvaTrainer",
        {**demo, "train.grad_clip": 1.0},
        "SimCLR on a tiny ResEnc, 24^3 crops from 48^3 patches, 8 epochs x 10 iterations.",
        "SimCLR on a tiny Primus, 24^3 crops from 48^3 patches, 1 warm-up epoch.",
    )


def register_voco() -> None:
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
                **NO_PATCH_AUGMENTATION,
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
            overrides=dict(EVA_OPTIM),
            description="VoCo on Primus-M with an EMA teacher, AdamW 3e-4, 50 warm-up epochs, clip 1.",
        )
    )
    # The demo keeps upstream's 4x4x1 grid (16 bases; a target overlaps at most 4, so ~77% of the labels are 0 and
    # L_neg has entries): with 2x2x1 bases almost every target overlaps every base (~11% zero labels) and the
    # loss barely falls. A slower teacher (0.99 instead of the VoCo code's 0.9) is what made the validation hit
    # rate and overlap correlation rise on the demo; on the tiny ResEnc SGD 1e-2 lowered them, AdamW 1e-3 raised
    # them. Eight validation batches (128 targets) make those metrics comparable between epochs
    # (documentation/contrastive.md, VoCo).
    demo = {
        **CONTRASTIVE_DEMO,
        "train.patch_size": (64, 64, 16),
        "method.crop_size": (16, 16, 16),
        "method.num_targets": 4,
        "method.teacher_momentum": 0.99,
        "train.val_iterations": 8,
    }
    add_demo_pair(
        "VoCo",
        "VoCoTrainer",
        "VoCoEvaTrainer",
        demo,
        "VoCo on a tiny ResEnc, 4x4x1 base crops of 16^3 + 4 targets, EMA 0.99, AdamW 1e-3, 16 x 10 iterations.",
        "VoCo on a tiny Primus, 4x4x1 base crops of 16^3 + 4 targets, EMA 0.99, 40 x 10 iterations.",
        primus_overrides={"train.num_epochs": 40},
        cnn_overrides={
            **EVA_OPTIM,  # AdamW, wd 0.05, betas (0.9, 0.98); at 1e-3 with one warm-up epoch and cosine decay
            "optim.lr": 1e-3,
            "optim.schedule": "warmup_cosine",
            "optim.warmup_epochs": 1,
            "train.grad_clip": None,  # VoCoTrainer's
            "train.num_epochs": 16,
        },
    )


def register() -> None:
    """SimCLR and VoCo presets."""
    register_simclr()
    register_voco()
