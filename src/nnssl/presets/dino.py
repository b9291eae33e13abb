"""DINO presets (DINOv2-style on Primus-M, DINO on Primus-M and ResEnc-L) and CPU demos."""

from __future__ import annotations

from nnssl.presets import Preset, add_preset
from nnssl.presets.common import DEMO_DATA


def register() -> None:
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
                # Sinkhorn on one micro-batch (16 teacher rows vs K 8192) caps every target at 16/K: mean centring
                # (method.centering=sinkhorn with method.sinkhorn_queue >= K lifts the cap for large runs)
                "method.centering": "mean",
                "method.center_momentum": 0.9,
                "method.ibot": True,
                "method.koleo_weight": 0.1,
            },
            description="DINOv2 (DINO + iBOT + KoLeo) on Primus-M: 2x96^3 + 8x48^3 crops, K 8192, mean centring, "
            "B_eff 64 (8 x 8 accumulation), lr 0.004*sqrt(64/1024).",
        )
    )
    add_preset(
        Preset(
            "DINOTrainer",
            base="DINOv2EvaTrainer",
            overrides={"method.ibot": False},
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
        **DEMO_DATA,
        "method.num_prototypes": 1024,
        "method.head_hidden_dim": 256,
        "method.head_bottleneck_dim": 64,
        "method.global_crop_size": 32,
        "method.local_crop_size": 16,
        "method.num_local_crops": 2,
        # 120 steps: the teacher's outputs never differ enough between samples for 0.07 (documentation/dino.md)
        "method.teacher_temp_end": 0.04,
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
            description="CPU demo: DINOv2 (iBOT + KoLeo) on a tiny Primus, 2x32^3 + 2x16^3 crops, K 1024, mean "
            "centring, teacher temperature 0.04.",
        )
    )
    add_preset(
        Preset(
            "DemoDINO_ResEncTiny",
            base="DINOResEncTrainer",
            architecture="ResEncTiny",
            overrides={**demo, "train.batch_size": 2},
            description="CPU demo: DINO + KoLeo on a tiny ResEnc, 2x32^3 + 2x16^3 crops, K 1024, mean centring, "
            "teacher temperature 0.04.",
        )
    )
    register_registration_recipe(demo)


def register_registration_recipe(demo: dict) -> None:
    """DINOv2 pre-training tuned for training-free registration (med_ssl_3d, downstream.md; documentation/dino.md).

    ``DINORegPrimus4``: Primus with 4^3 tokens and a narrow width (embed 180, 3 heads of 60 = head width close to
    Primus-M's 72; depth 16 as Primus-M, which the reference does not state) at 128^3 input (32^3 = 32,768 tokens):
    small tokens keep local anatomy. DINOv2 objective: DINO CLS + iBOT with separate heads, K 8192 for both, mean
    centring; teacher temperature 0.04 -> 0.07 over the whole run, EMA 0.992 -> 0.998, layer-wise lr decay 0.9 and
    x0.2 on the patch embedding (``down_projection``), weight decay 0.04 (constant), clip 3; iBOT on half of the
    global views (DINOv2) with ratio U(0.4, 0.7) as block masks; no local crops (the reference does not interpolate
    positional embeddings there); two global crops of 0.6-1.0 of the 128^3 patch volume; GIN on half of the views.

    Learning rate: our DINO rule ``lr = 0.002 * sqrt(B_eff / 1024)`` (3DINO's base 0.002, half of DINOv2's 0.004, as
    for ViT-L in 3D) with B_eff = 2 x 16 accumulation = 32 volumes -> 3.5e-4 at the top layer; block ``i`` of 16 gets
    0.9^(17 - i) of it, the patch embedding 0.9^17 x 0.2 = 0.033 (1.2e-5). Two 128^3 volumes with 32,768 tokens each
    (x 2 global views, + the teacher) are what one GPU holds, and B_eff 32 keeps the DINO centre and KoLeo
    statistics meaningful. med_ssl_3d's "base lr 6e-6" is not copied: its batch rule is not stated, and a
    per-sample lr that small would be ~60x below every DINO recipe of methods.md 2.1 at this batch size.
    """
    add_preset(
        Preset(
            "DINORegPrimus4",
            base="DINOv2EvaTrainer",
            architecture="PrimusM",
            overrides={
                "arch.token_size": 4,
                "arch.embed_dim": 180,
                "arch.num_heads": 3,
                "train.patch_size": (128, 128, 128),
                "train.batch_size": 2,
                "train.grad_accumulation_steps": 16,
                "train.num_epochs": 200,
                "train.iterations_per_epoch": 32,
                "train.grad_clip": 3.0,
                "optim.lr": 2e-3,
                "optim.lr_scaling": "sqrt1024",
                "optim.weight_decay": 0.04,
                "optim.weight_decay_end": None,
                "method.num_prototypes": 8192,
                "method.ibot": True,
                "method.ibot_mask_ratio": (0.4, 0.7),
                "method.ibot_mask_mode": "block",
                "method.ibot_sample_probability": 0.5,
                "method.teacher_temp_start": 0.04,
                "method.teacher_temp_end": 0.07,
                "method.teacher_temp_warmup_epochs": 200,
                "method.momentum_start": 0.992,
                "method.momentum_end": 0.998,
                "method.layer_decay": 0.9,
                "method.patch_embed_lr_mult": 0.2,
                "method.num_local_crops": 0,
                "method.global_crop_size": 128,
                "method.global_crop_scale": (0.6, 1.0),
                "method.gin_p": 0.5,
            },
            description="DINOv2 for registration features (med_ssl_3d): Primus 4^3 tokens, width 180, 128^3 input, "
            "DINO + iBOT (block masks, U(0.4,0.7)), K 8192, EMA 0.992->0.998, layer decay 0.9, GIN, no local crops.",
        )
    )
    add_preset(
        Preset(
            "DemoDINO_PrimusTiny4Reg",
            base="DINORegPrimus4",
            architecture="PrimusTiny",
            overrides={
                **demo,
                "arch.token_size": 4,
                "arch.embed_dim": None,
                "arch.num_heads": None,
                "train.patch_size": (32, 32, 32),
                "train.batch_size": 2,
                "train.grad_accumulation_steps": 1,
                "train.num_epochs": 12,
                "train.iterations_per_epoch": 10,
                "method.num_local_crops": 0,
                "method.global_crop_size": 32,
                "method.teacher_temp_warmup_epochs": 3,
                "method.ibot_sample_probability": 1.0,
            },
            description="CPU demo of the registration recipe: PrimusTiny with 4^3 tokens (8^3 grid at 32^3), DINO + "
            "iBOT block masks, layer decay 0.9, GIN, no local crops, K 1024.",
        )
    )
