"""GVSL presets: upstream's ``GVSLTrainer`` family (ResEnc-L; MIC-DKFZ/nnssl ``gvsl/GVSLTrainer.py``, where every
class raises "Missing adaptation plan") as data, ``GVSLEvaTrainer`` on Primus-M (no upstream counterpart; named after
upstream's ``<X>EvaTrainer`` convention), and the CPU demos.

Upstream: 160^3 crops (its loader: centre crops, no patch augmentation; ours: random crops, no patch augmentation,
the method draws its own spatial augmentation on the device), CNN defaults (SGD 1e-2, poly, clip 12, batch 2).
Upstream's batch of 2 loads 4 crops (2 fixed + 2 moving); ours pairs every crop of the batch with another one of the
same batch, so batch 2 gives the same 2 pairs from 2 crops.
"""

from __future__ import annotations

from nnssl.presets import Preset, add_preset
from nnssl.presets.common import CNN_DEFAULTS, EVA_OPTIM, NO_PATCH_AUGMENTATION, add_demo_pair

NO_SPATIAL = {"method.spatial_aug": False}
RECON_ONLY = {"method.registration": False, "optim.lr": 1e-4, "train.iterations_per_epoch": 100}


def register() -> None:
    """GVSLTrainer and its upstream variants, GVSLEvaTrainer, DemoGVSL_ResEncTiny / _PrimusTiny."""
    add_preset(
        Preset(
            "GVSLTrainer",
            method="GVSL",
            architecture="ResEncL",
            overrides={**CNN_DEFAULTS, **NO_PATCH_AUGMENTATION},
            description="GVSL on ResEnc-L: affine + deformable registration of another case onto each 160^3 crop "
            "(NCC 9^3) + restoration (MSE) + smoothness, weights 1/1/1, on-device spatial augmentation; SGD 1e-2, "
            "clip 12, batch 2.",
        )
    )
    variants = {
        "GVSLTrainer_do_spatial": ({}, "with the spatial augmentation (as GVSLTrainer)"),
        "GVSLTrainer_no_spatial": (NO_SPATIAL, "without the spatial augmentation"),
        "GVSLTrainer_test": (
            {
                "train.patch_size": (192, 192, 192),
                "train.batch_size": 4,
                "train.iterations_per_epoch": 20,
                "train.val_iterations": 2,
            },
            "upstream's short test: 192^3, batch 4, 20 iterations per epoch",
        ),
        "GVSLTrainer_BS2_lr_1e4": ({"optim.lr": 1e-4}, "learning rate 1e-4"),
        "GVSLTrainer_BS2_lr_1e5": ({"optim.lr": 1e-5}, "learning rate 1e-5"),
        "GVSLTrainer_recon_only": (
            {**RECON_ONLY, **NO_SPATIAL},
            "restoration only (no registration heads), no spatial augmentation, lr 1e-4, 100 iterations per epoch",
        ),
        "GVSLTrainer_recon_only_with_spatial": (
            RECON_ONLY,
            "restoration only (no registration heads), with spatial augmentation, lr 1e-4, 100 iterations per epoch",
        ),
    }
    for name, (overrides, text) in variants.items():
        add_preset(Preset(name, base="GVSLTrainer", overrides=overrides, description=f"GVSLTrainer, {text}."))
    add_preset(
        Preset(
            "GVSLEvaTrainer",
            base="GVSLTrainer",
            architecture="PrimusM",
            overrides=dict(EVA_OPTIM),
            description="GVSL on Primus-M (no upstream counterpart; named after upstream's Eva convention): global "
            "features = token grid, local = last PatchDecode stage (1/2 resolution); AdamW 3e-4, 50 warm-up epochs, "
            "clip 1.",
        )
    )
    demo = {
        "train.patch_size": (32, 32, 32),
        "train.batch_size": 4,
        "train.num_epochs": 8,
        "train.iterations_per_epoch": 10,
        "train.val_iterations": 2,
        "method.affine_hidden": 32,
        # the elastic field scaled to the 32^3 demo patch (upstream: sigma 10-13, alpha 0-512 for 160^3)
        "method.elastic_sigma": (2.0, 2.6),
        "method.elastic_alpha": (0.0, 20.0),
    }
    add_demo_pair(
        "GVSL",
        "GVSLTrainer",
        "GVSLEvaTrainer",
        demo,
        "GVSL on a tiny ResEnc, 32^3 patches, 4 pairs per batch, 8 epochs x 10 iterations, AdamW 1e-3.",
        "GVSL on a tiny Primus, 32^3 patches, 4 pairs per batch, 8 epochs x 10 iterations, 1 warm-up epoch.",
        # SGD 1e-2 with momentum 0.99 let the tiny ResEnc's displacement grow rough (|u| 0.1 -> 1.1 voxels, smoothness
        # 0.001 -> 0.22 in 4 short epochs) and the registered NCC rise above the unregistered one; AdamW 1e-3 as on
        # the tiny Primus (the GVSL code trains with Adam 1e-4).
        cnn_overrides={**EVA_OPTIM, "optim.lr": 1e-3, "optim.warmup_epochs": 1, "train.grad_clip": 12.0},
    )
