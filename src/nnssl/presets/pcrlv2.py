"""PCRLv2 presets: upstream's ``PCRLv2Trainer`` family (MIC-DKFZ/nnssl ``PCLRv2/PCLRv2_Trainer.py``, where it raises
"Missing adaptation plan") on ResEnc-L, ``PCLRv2_Trainer`` (the file's name, as issue 14 spells it) as an alias,
``PCRLv2EvaTrainer`` on Primus-M (no upstream counterpart; named after upstream's ``<X>EvaTrainer`` convention), and
the CPU demos.

Upstream: 180^3 patches from the plain loader (no patch augmentation; the views carry their own), CNN defaults
(SGD 1e-2, poly, clip 12, batch 2), global views 128^3 from boxes of 96^3 ... 160^3 (IoU >= 0.3), 6 local views 64^3
from boxes of 32^3 ... 64^3.
"""

from __future__ import annotations

from nnssl.presets import Preset, add_preset
from nnssl.presets.common import CNN_DEFAULTS, EVA_OPTIM, NO_PATCH_AUGMENTATION, add_demo_pair

BASE_TEXT = (
    "PCRLv2 on ResEnc-L: 2 global views 128^3 (IoU >= 0.3) + 6 local views 64^3 from 180^3 patches, multi-scale "
    "restoration of the un-augmented global view + symmetric stop-gradient cosine (global and local), SGD 1e-2, "
    "clip 12, batch 2."
)


def register() -> None:
    """PCRLv2Trainer (+ _BS8, _test), PCLRv2_Trainer, PCRLv2EvaTrainer, DemoPCRLv2_ResEncTiny / _PrimusTiny."""
    add_preset(
        Preset(
            "PCRLv2Trainer",
            method="PCRLv2",
            architecture="ResEncL",
            overrides={**CNN_DEFAULTS, **NO_PATCH_AUGMENTATION, "train.patch_size": (180, 180, 180)},
            description=BASE_TEXT,
        )
    )
    add_preset(
        Preset(
            "PCLRv2_Trainer",
            base="PCRLv2Trainer",
            description="PCRLv2Trainer under the name of upstream's file (PCLRv2_Trainer.py), as issue 14 spells it.",
        )
    )
    add_preset(
        Preset(
            "PCRLv2Trainer_BS8",
            base="PCRLv2Trainer",
            overrides={"train.batch_size": 8},
            description="PCRLv2Trainer with total batch size 8.",
        )
    )
    add_preset(
        Preset(
            "PCRLv2Trainer_test",
            base="PCRLv2Trainer",
            overrides={
                "method.global_size": (96, 96, 96),
                "train.iterations_per_epoch": 20,
                "train.val_iterations": 5,
                "optim.lr": 1e-3,
            },
            description="Upstream's short test: global views 96^3, 20 iterations per epoch, lr 1e-3.",
        )
    )
    add_preset(
        Preset(
            "PCRLv2EvaTrainer",
            base="PCRLv2Trainer",
            architecture="PrimusM",
            overrides=dict(EVA_OPTIM),
            description="PCRLv2 on Primus-M (no upstream counterpart; named after upstream's Eva convention): scales "
            "from the Eva decoder and PatchDecode, local views at their own token grid (positional embedding "
            "resampled); AdamW 3e-4, 50 warm-up epochs, clip 1.",
        )
    )
    demo = {
        "train.patch_size": (40, 40, 40),
        "train.batch_size": 4,
        "train.num_epochs": 8,
        "train.iterations_per_epoch": 10,
        "train.val_iterations": 2,
        "method.global_crop_sizes": ("24x24x24", "32x32x24", "32x32x32"),
        "method.global_size": (32, 32, 32),
        "method.local_crop_sizes": ("8x8x8", "16x16x8", "16x16x16"),
        "method.local_size": (16, 16, 16),
    }
    add_demo_pair(
        "PCRLv2",
        "PCRLv2Trainer",
        "PCRLv2EvaTrainer",
        demo,
        "PCRLv2 on a tiny ResEnc, 32^3 global + 6 x 16^3 local views from 40^3 patches, 8 epochs x 10 iterations.",
        "PCRLv2 on a tiny Primus, 32^3 global + 6 x 16^3 local views from 40^3 patches, 1 warm-up epoch.",
    )
