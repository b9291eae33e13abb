"""AlignedMAE (CVA) presets: upstream LatentCampus trainer names on ResEnc-L and Primus-M, and CPU demos."""

from __future__ import annotations

from nnssl.presets import Preset, add_preset
from nnssl.presets.common import add_demo_pair


def register() -> None:
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
                "method.dense_grid": 16,
                "method.global_pool": "mean",
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
                "method.dense_grid": None,
                "method.global_pool": "attention",
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
    }
    add_demo_pair(
        "AlignedMAE",
        "AlignedMAEFTTrainer",
        "AlignedMAEFTLR3EvaTrainer",
        demo,
        "AlignedMAE on a tiny ResEnc, 32^3 crops from 52^3 patches, 12 x 20 iterations.",
        "AlignedMAE on a tiny Primus, 32^3 crops from 52^3 patches, 1 warm-up epoch.",
        primus_overrides={"method.dense_grid": None},
    )
