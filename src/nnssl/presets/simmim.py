"""SimMIM presets: upstream's ``SimMIMEvaTrainer`` (Primus-M) and ``_BS8``, our ``SimMIMTrainer`` (ResEnc-L), demos.

Upstream (MIC-DKFZ/nnssl ``masked_image_modeling/SimMIMEvaTrainer.py``) builds ``EvaSimMIM`` on BaseMAETrainer's data
path and loop: 160^3 patches, 75% of the 8^3 tokens masked, Primus-M (864-d, 16 blocks, 12 heads, drop-path 0.2),
AdamW 3e-4, weight decay 5e-2, betas (0.9, 0.98), 50 warm-up epochs, clip 1, batch 2. Upstream has no CNN SimMIM
trainer; ``SimMIMTrainer`` follows its naming (``<X>Trainer`` on ResEnc-L beside ``<X>EvaTrainer``) with the CNN
defaults of ``BaseMAETrainer``.
"""

from __future__ import annotations

from nnssl.presets import Preset, add_preset
from nnssl.presets.common import EVA_OPTIM, add_demo_pair


def register() -> None:
    """SimMIMTrainer (ResEnc-L), SimMIMEvaTrainer and SimMIMEvaTrainer_BS8 (Primus-M), DemoSimMIM_* demos."""
    add_preset(
        Preset(
            "SimMIMTrainer",
            base="BaseMAETrainer",
            method="SimMIM",
            description="SimMIM on ResEnc-L (no upstream CNN trainer; named after upstream's convention): 75% of "
            "16^3 cubes take a learned value at the input, U-Net decoder, L1 on masked voxels; SGD 1e-2, clip 12.",
        )
    )
    add_preset(
        Preset(
            "SimMIMEvaTrainer",
            base="SimMIMTrainer",
            architecture="PrimusM",
            overrides=dict(EVA_OPTIM),
            description="SimMIM on Primus-M (upstream SimMIMEvaTrainer): 75% of 8^3 tokens replaced by a learned "
            "token at the patch embedding, PatchDecode only, L1 on masked voxels; AdamW 3e-4, 50 warm-up epochs.",
        )
    )
    add_preset(
        Preset(
            "SimMIMEvaTrainer_BS8",
            base="SimMIMEvaTrainer",
            overrides={"train.batch_size": 8},
            description="SimMIMEvaTrainer with total batch size 8.",
        )
    )
    demo = {
        "train.patch_size": (48, 48, 48),
        "train.batch_size": 2,
        "train.num_epochs": 12,
        "train.iterations_per_epoch": 20,
        "train.val_iterations": 4,
    }
    add_demo_pair(
        "SimMIM",
        "SimMIMTrainer",
        "SimMIMEvaTrainer",
        demo,
        "SimMIM on a tiny ResEnc, 48^3 patches, 12 epochs x 20 iterations.",
        "SimMIM on a tiny Primus, 48^3 patches, 12 epochs x 20 iterations, 1 warm-up epoch.",
    )
