"""SparK presets (CNN only): upstream's ``SparkMAETrainer``, ``EffSparkMAETrainer`` and the VariableSpark family on
ResEnc-L, the issue's short names ``SparkTrainer`` / ``EffSparkTrainer`` / ``VariableSparkTrainer`` (upstream's file
names) for the same runs, and a CPU demo on ResEncTiny.

Upstream (MIC-DKFZ/nnssl ``masked_image_modeling/SparkTrainer.py``, ``EffSparkTrainer.py``,
``VariableSparkTrainer.py``) inherits BaseMAETrainer: 160^3 patches with its spatial augmentation, 75% of 16^3 cubes,
SGD 1e-2 Nesterov 0.99, weight decay 3e-5, poly schedule, clip 12, batch 2, 1000 x 250 iterations.
``EffSparkMAETrainer`` drops the densify norm and projection; ``BaseVariableSparkMAETrainer`` draws the mask ratio
from U(0.6, 0.9) per step. There is no Primus SparK: sparse convolution is a CNN operation, and the method's
configuration refuses transformer architectures.
"""

from __future__ import annotations

from typing import Any

from nnssl.presets import Preset, add_preset
from nnssl.presets.common import DEMO_DATA

CNN_ONLY = "SparK (CNN only)"
VARIABLE = {"method.mask_ratio_range": (0.6, 0.9)}


def _add(name: str, base: str, overrides: dict[str, Any], text: str, method: str | None = None) -> None:
    add_preset(Preset(name, base=base, method=method, overrides=overrides, description=f"{CNN_ONLY}: {text}"))


def register() -> None:
    """The SparK, EffSpark and VariableSpark presets (upstream class names and the issue's names), the demo."""
    _add(
        "SparkMAETrainer",
        "BaseMAETrainer",
        {},
        "upstream SparkMAETrainer on ResEnc-L: sparse conv + masked instance norm encoder, per-stage mask tokens, "
        "densify (norm, token, 3x3x3 conv), U-Net decoder, MSE on 75% of 16^3 cubes; SGD 1e-2, clip 12, batch 2.",
        method="SparK",
    )
    _add("SparkTrainer", "SparkMAETrainer", {}, "SparkMAETrainer (the name of upstream's file SparkTrainer.py).")
    _add("SparkMAETrainer_BS8", "SparkMAETrainer", {"train.batch_size": 8}, "SparkMAETrainer, total batch size 8.")
    _add(
        "SparkMAETrainer_BS8_1000ep",
        "SparkMAETrainer",
        {"train.batch_size": 8, "train.num_epochs": 1000},
        "SparkMAETrainer, total batch size 8, 1000 epochs.",
    )
    _add(
        "EffSparkMAETrainer",
        "SparkMAETrainer",
        {"method.densify": "token"},
        "upstream EffSparkMAETrainer on ResEnc-L: SparK with the mask tokens added to the sparse stages and no "
        "densify norm or projection.",
    )
    _add("EffSparkTrainer", "EffSparkMAETrainer", {}, "EffSparkMAETrainer (upstream's file EffSparkTrainer.py).")
    _add(
        "EffSparkMAETrainer_BS8_1000ep",
        "EffSparkMAETrainer",
        {"train.batch_size": 8, "train.num_epochs": 1000},
        "EffSparkMAETrainer, total batch size 8, 1000 epochs.",
    )
    _add(
        "BaseVariableSparkMAETrainer",
        "SparkMAETrainer",
        VARIABLE,
        "upstream BaseVariableSparkMAETrainer on ResEnc-L: SparkMAETrainer with the mask ratio drawn from "
        "U(0.6, 0.9) per step.",
    )
    _add(
        "VariableSparkTrainer",
        "BaseVariableSparkMAETrainer",
        {},
        "BaseVariableSparkMAETrainer (upstream's file VariableSparkTrainer.py).",
    )
    _add(
        "VariableSparkMAETrainer_BS8",
        "BaseVariableSparkMAETrainer",
        {"train.batch_size": 8},
        "BaseVariableSparkMAETrainer, total batch size 8.",
    )
    _add(
        "BigVariableSparkMAETrainer",
        "BaseVariableSparkMAETrainer",
        {"train.batch_size": 48, "train.num_epochs": 4000, "optim.lr": 3e-2},
        "BaseVariableSparkMAETrainer, total batch size 48, 4000 epochs, lr 3e-2.",
    )
    add_preset(
        Preset(
            "DemoSparK_ResEncTiny",
            base="SparkMAETrainer",
            architecture="ResEncTiny",
            overrides={
                **DEMO_DATA,
                "train.patch_size": (48, 48, 48),
                "train.batch_size": 2,
                "train.num_epochs": 12,
                "train.iterations_per_epoch": 20,
                "train.val_iterations": 4,
            },
            description=f"CPU demo: {CNN_ONLY} on a tiny ResEnc, 48^3 patches, 12 epochs x 20 iterations.",
        )
    )
