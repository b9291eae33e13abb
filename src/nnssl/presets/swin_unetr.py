"""SwinUNETR pretext presets: upstream's ``SwinUNETRTrainer`` family (ResEnc-L) and ``SwinUNETREvaTrainer`` family
(Primus-M), as data, and the CPU demos.

Upstream (MIC-DKFZ/nnssl ``swinunetr_pretrain/SwinUNETRTrainer.py``, ``SwinUNETREvaTrainer.py``): 160^3 patches from
the plain loader without spatial augmentation, weights 1/1/1, CNN defaults with clip 12 (the paper's AdamW 4e-4 is
commented out there), Eva defaults (AdamW 3e-4, 50 warm-up epochs, clip 1) on Primus-M.
"""

from __future__ import annotations

from nnssl.presets import Preset, add_preset
from nnssl.presets.common import CNN_DEFAULTS, EVA_OPTIM, NO_PATCH_AUGMENTATION, add_demo_pair


def register() -> None:
    """SwinUNETRTrainer (+ _BS2, _BS8), SwinUNETREvaTrainer (+ _BS8), DemoSwinUNETR_ResEncTiny / _PrimusTiny."""
    add_preset(
        Preset(
            "SwinUNETRTrainer",
            method="SwinUNETR",
            architecture="ResEncL",
            overrides={**CNN_DEFAULTS, **NO_PATCH_AUGMENTATION},
            description="SwinUNETR pretext on ResEnc-L: two rot90 views of 160^3 crops with noise and cross-case "
            "cut-outs; rotation CE + NT-Xent (tau 0.5) + in-painting L1, weights 1/1/1; SGD 1e-2, clip 12, batch 2.",
        )
    )
    for bs in (2, 8):
        add_preset(
            Preset(
                f"SwinUNETRTrainer_BS{bs}",
                base="SwinUNETRTrainer",
                overrides={"train.batch_size": bs},
                description=f"SwinUNETRTrainer with total batch size {bs}.",
            )
        )
    add_preset(
        Preset(
            "SwinUNETREvaTrainer",
            base="SwinUNETRTrainer",
            architecture="PrimusM",
            overrides=dict(EVA_OPTIM),
            description="SwinUNETR pretext on Primus-M (heads on the mean token, PatchDecode for in-painting), "
            "AdamW 3e-4, 50 warm-up epochs, clip 1.",
        )
    )
    add_preset(
        Preset(
            "SwinUNETREvaTrainer_BS8",
            base="SwinUNETREvaTrainer",
            overrides={"train.batch_size": 8},
            description="SwinUNETREvaTrainer with total batch size 8.",
        )
    )
    demo = {
        "train.patch_size": (32, 32, 32),
        "train.batch_size": 4,
        "train.num_epochs": 8,
        "train.iterations_per_epoch": 10,
        "train.val_iterations": 2,
        "method.contrast_dim": 128,
    }
    # On the tiny ResEnc, SGD 1e-2 with momentum 0.99 drove the linear rotation head above chance-level CE (1.5 -> 1.9
    # over 8 epochs, documentation/swin_unetr.md); AdamW 1e-3 as the VoCo ResEnc demo.
    add_demo_pair(
        "SwinUNETR",
        "SwinUNETRTrainer",
        "SwinUNETREvaTrainer",
        demo,
        "SwinUNETR pretext on a tiny ResEnc, 32^3 patches, AdamW 1e-3, 8 epochs x 10 iterations.",
        "SwinUNETR pretext on a tiny Primus, 32^3 patches, 8 epochs x 10 iterations, 1 warm-up epoch.",
        cnn_overrides={
            **EVA_OPTIM,
            "optim.lr": 1e-3,
            "optim.schedule": "warmup_cosine",
            "optim.warmup_epochs": 1,
            "train.grad_clip": 12.0,
        },
    )
