"""VolumeFusion presets: upstream's ``VolumeFusionTrainer`` family (ResEnc-L) and ``VolumeFusionEvaTrainer`` family
(Primus-M), as data, and the CPU demos.

Upstream (MIC-DKFZ/nnssl ``volume_fusion/VolumeFusionTrainer.py``, ``VolumeFusionEvaTrainer.py``): 160^3 patches,
no rotation or scaling, mirroring on every axis, intensity augmentation per image, CNN defaults with clip 12 (the
MIS-FM paper's Adam settings were deliberately not used), Eva defaults on Primus-M; the ``_BS8_lr_*_wd_*`` variants
sweep learning rate and weight decay, ``_C3`` / ``_C9`` the number of fusion classes.
"""

from __future__ import annotations

from typing import Any

from nnssl.presets import Preset, add_preset
from nnssl.presets.common import CNN_DEFAULTS, EVA_OPTIM, add_demo_pair

#: Upstream's VolumeFusion loader: no rotation, no scaling; mirroring (0, 1, 2) stays on.
NO_ROTATION_OR_SCALING: dict[str, Any] = {"data.rotation_p": 0.0, "data.scale_p": 0.0}

#: Upstream's batch-8 variants: name suffix -> overrides.
BS8_VARIANTS: dict[str, dict[str, Any]] = {
    "_BS8": {},
    "_BS8_lr_1e3": {"optim.lr": 1e-3},
    "_BS8_lr_1e4": {"optim.lr": 1e-4},
    "_BS8_lr_1e3_wd_3e4": {"optim.lr": 1e-3, "optim.weight_decay": 3e-4},
    "_BS8_lr_1e3_wd_3e6": {"optim.lr": 1e-3, "optim.weight_decay": 3e-6},
    "_BS8_lr_1e3_wd_3e5_C3": {"optim.lr": 1e-3, "optim.weight_decay": 3e-5, "method.num_classes": 3},
    "_BS8_lr_1e3_wd_3e5_C9": {"optim.lr": 1e-3, "optim.weight_decay": 3e-5, "method.num_classes": 9},
}


def register() -> None:
    """VolumeFusionTrainer (+ the _BS8 variants), VolumeFusionEvaTrainer (+ _BS8), DemoVolumeFusion_*."""
    add_preset(
        Preset(
            "VolumeFusionTrainer",
            method="VolumeFusion",
            architecture="ResEncL",
            overrides={**CNN_DEFAULTS, **NO_ROTATION_OR_SCALING},
            description="VolumeFusion on ResEnc-L: pairs of random 160^3 crops fused through 10-39 boxes with alpha "
            "in {0,.25,.5,.75,1}, 5-class Dice + CE; SGD 1e-2, clip 12, batch 2.",
        )
    )
    for suffix, overrides in BS8_VARIANTS.items():
        text = ", ".join(f"{k.split('.')[-1]}={v}" for k, v in overrides.items()) or "upstream defaults"
        add_preset(
            Preset(
                f"VolumeFusionTrainer{suffix}",
                base="VolumeFusionTrainer",
                overrides={"train.batch_size": 8, **overrides},
                description=f"VolumeFusionTrainer with batch size 8 ({text}).",
            )
        )
    add_preset(
        Preset(
            "VolumeFusionEvaTrainer",
            base="VolumeFusionTrainer",
            architecture="PrimusM",
            overrides=dict(EVA_OPTIM),
            description="VolumeFusion on Primus-M (encoder tokens -> PatchDecode with 5 channels, no Eva decoder as "
            "upstream), AdamW 3e-4, 50 warm-up epochs, clip 1.",
        )
    )
    add_preset(
        Preset(
            "VolumeFusionEvaTrainer_BS8",
            base="VolumeFusionEvaTrainer",
            overrides={"train.batch_size": 8},
            description="VolumeFusionEvaTrainer with total batch size 8.",
        )
    )
    demo = {
        "train.patch_size": (32, 32, 32),
        "train.batch_size": 4,
        "train.num_epochs": 8,
        "train.iterations_per_epoch": 10,
        "train.val_iterations": 2,
        "method.min_box_side": 4,
    }
    add_demo_pair(
        "VolumeFusion",
        "VolumeFusionTrainer",
        "VolumeFusionEvaTrainer",
        demo,
        "VolumeFusion on a tiny ResEnc, 32^3 patches, boxes of 4-20 voxels, 8 epochs x 10 iterations.",
        "VolumeFusion on a tiny Primus, 32^3 patches, boxes of 4-20 voxels, 8 epochs x 10 iterations.",
    )
