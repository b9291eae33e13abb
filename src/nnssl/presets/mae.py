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
