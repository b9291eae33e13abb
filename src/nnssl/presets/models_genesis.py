"""Models Genesis presets: upstream's ``ModelGenesisTrainer`` family (ResEnc-L) and ``ModelGenesisEvaTrainer``
family (Primus-M), as data, and the CPU demos.

Upstream (MIC-DKFZ/nnssl ``models_genesis/ModelGenesisTrainer.py``, ``ModelsGenesisEvaTrainer.py``): 160^3 patches
from the plain loader without spatial augmentation, CNN defaults with clip 12, Eva defaults (AdamW 3e-4, 50
warm-up epochs, clip 1) on Primus-M; ``_ANAT`` crops around anatomy, ``_ANON`` leaves defaced voxels out of the loss.
"""

from __future__ import annotations

from nnssl.presets import Preset, add_preset
from nnssl.presets.common import CNN_DEFAULTS, EVA_OPTIM, NO_PATCH_AUGMENTATION, add_demo_pair

ANAT = {"data.anatomy_crop_p": 1.0}
ANON = {"method.ignore_anonymized": True}


def register() -> None:
    """ModelGenesisTrainer (+ _BS8, _ANAT, _ANON, _ANAT_ANON, _ANAT_ANON_BS8, _ANAT_ANON_BS8_T1w_T2w_FLAIR),
    ModelGenesisEvaTrainer (+ _BS8), and DemoModelsGenesis_ResEncTiny / _PrimusTiny."""
    add_preset(
        Preset(
            "ModelGenesisTrainer",
            method="ModelsGenesis",
            architecture="ResEncL",
            overrides={**CNN_DEFAULTS, **NO_PATCH_AUGMENTATION},
            description="Models Genesis on ResEnc-L: restore 160^3 crops from flip, local shuffle, Bezier map and "
            "in/out-painting (on a [0,1]-rescaled copy), MSE; SGD 1e-2, clip 12, batch 2.",
        )
    )
    variants = {
        "ModelGenesisTrainer_BS8": ({"train.batch_size": 8}, "batch size 8"),
        "ModelGenesisTrainer_ANAT": (ANAT, "crops centred in the anatomy mask"),
        "ModelGenesisTrainer_ANON": (ANON, "defaced voxels left out of the loss"),
        "ModelGenesisTrainer_ANAT_ANON": ({**ANAT, **ANON}, "anatomy crops, defaced voxels left out of the loss"),
        "ModelGenesisTrainer_ANAT_ANON_BS8": (
            {**ANAT, **ANON, "train.batch_size": 8},
            "anatomy crops, defaced voxels left out of the loss, batch size 8",
        ),
        "ModelGenesisTrainer_ANAT_ANON_BS8_T1w_T2w_FLAIR": (
            {**ANAT, **ANON, "train.batch_size": 8, "data.filters": ("modality=T1w|T2w|FLAIR",)},
            "anatomy crops, defaced voxels left out of the loss, batch size 8, T1w/T2w/FLAIR images only",
        ),
    }
    for name, (overrides, text) in variants.items():
        add_preset(
            Preset(name, base="ModelGenesisTrainer", overrides=overrides, description=f"ModelGenesisTrainer, {text}.")
        )
    add_preset(
        Preset(
            "ModelGenesisEvaTrainer",
            base="ModelGenesisTrainer",
            architecture="PrimusM",
            overrides=dict(EVA_OPTIM),
            description="Models Genesis on Primus-M (encoder tokens -> PatchDecode, no Eva decoder as upstream), "
            "AdamW 3e-4, 50 warm-up epochs, clip 1.",
        )
    )
    add_preset(
        Preset(
            "ModelGenesisEvaTrainer_BS8",
            base="ModelGenesisEvaTrainer",
            overrides={"train.batch_size": 8},
            description="ModelGenesisEvaTrainer with total batch size 8.",
        )
    )
    demo = {
        "train.patch_size": (32, 32, 32),
        "train.batch_size": 4,
        "train.num_epochs": 8,
        "train.iterations_per_epoch": 10,
        "train.val_iterations": 2,
    }
    add_demo_pair(
        "ModelsGenesis",
        "ModelGenesisTrainer",
        "ModelGenesisEvaTrainer",
        demo,
        "Models Genesis on a tiny ResEnc, 32^3 patches, 8 epochs x 10 iterations.",
        "Models Genesis on a tiny Primus, 32^3 patches, 8 epochs x 10 iterations, 1 warm-up epoch.",
    )
