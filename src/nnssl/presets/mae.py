"""MAE presets (upstream ``BaseMAETrainer`` / ``BaseEvaMAETrainer`` and their one-line subclasses, as data).

Upstream's one-liner subclasses become generated names: ``<base>_BS<b>`` for every batch size upstream used and
``<base>_BS8_<n>ep`` for every epoch count, for both the CNN (``BaseMAETrainer``, ResEnc-L) and the Primus
(``BaseEvaMAETrainer``, Primus-M) families. ``DemoMAE_*`` presets are tiny CPU runs.
"""

from __future__ import annotations

from typing import Any

from nnssl.presets import Preset, add_preset
from nnssl.presets.common import CNN_DEFAULTS, EVA_OPTIM, add_demo_pair

#: Batch sizes and epoch counts of upstream's variant classes (upstream-nnssl.md 5.5).
UPSTREAM_BATCH_SIZES = (1, 2, 4, 6, 7, 8, 10, 16, 24, 28, 32)
UPSTREAM_EPOCHS = (5, 100, 250, 500, 1000, 2000, 3000, 4000)


def register() -> None:
    """BaseMAETrainer (ResEnc-L), BaseEvaMAETrainer (Primus-M), their _BS<b> and _BS8_<n>ep variants, the demos."""
    add_preset(
        Preset(
            "BaseMAETrainer",
            method="MAE",
            architecture="ResEncL",
            overrides=dict(CNN_DEFAULTS),
            description="MAE on ResEnc-L, upstream CNN defaults (SGD, poly, 1000x250, batch 2, 160^3).",
        )
    )
    add_preset(
        Preset(
            "BaseEvaMAETrainer",
            base="BaseMAETrainer",
            architecture="PrimusM",
            overrides=dict(EVA_OPTIM),
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
    }
    add_demo_pair(
        "MAE",
        "BaseMAETrainer",
        "BaseEvaMAETrainer",
        demo,
        "MAE on a tiny ResEnc, 48^3 patches, 12 epochs x 20 iterations.",
        "MAE on a tiny Primus, 48^3 patches, 12 epochs x 20 iterations, 1 warm-up epoch.",
    )
    register_upstream_filter_presets()


#: Upstream's data-filter trainers (OpenMind ablations, MIC-DKFZ/nnssl BaseMAETrainer.py "MASKS & IQS"): batch 8 on
#: BaseMAETrainer with ``data.filters``; ``iqs<=t`` keeps OpenMind image-quality scores <= t (1 best .. 5 worst).
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


def register_upstream_filter_presets() -> None:
    """The data-filter ablation presets of :data:`UPSTREAM_FILTER_PRESETS`."""
    for name, (filters, extra, text) in UPSTREAM_FILTER_PRESETS.items():
        add_preset(
            Preset(
                name,
                base="BaseMAETrainer_BS8",
                overrides={"data.filters": filters, **extra},
                description=f"BaseMAETrainer with batch size 8 on {text} (data.filters={','.join(filters)}).",
            )
        )
