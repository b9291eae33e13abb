"""Settings several preset families share, as data, and the helper that registers a CPU demo pair."""

from __future__ import annotations

from typing import Any

from nnssl.presets import Preset, add_preset

#: Upstream's CNN defaults (AbstractTrainer, methods.md 0.2): SGD Nesterov 0.99, lr 1e-2, poly, 1000 x 250, batch 2.
CNN_DEFAULTS: dict[str, Any] = {
    "optim.name": "sgd",
    "optim.lr": 1e-2,
    "optim.momentum": 0.99,
    "optim.nesterov": True,
    "optim.weight_decay": 3e-5,
    "optim.schedule": "poly",
    "optim.poly_exponent": 0.9,
    "optim.warmup_epochs": 0,
    "train.grad_clip": 12.0,
    "train.batch_size": 2,
    "train.num_epochs": 1000,
    "train.iterations_per_epoch": 250,
    "train.val_iterations": 50,
    "train.patch_size": (160, 160, 160),
}

#: Optimiser settings of upstream's Eva (Primus) family, shared by every Primus-M preset.
EVA_OPTIM: dict[str, Any] = {
    "optim.name": "adamw",
    "optim.lr": 3e-4,
    "optim.weight_decay": 5e-2,
    "optim.betas": (0.9, 0.98),
    "optim.schedule": "warmup_poly",
    "optim.warmup_epochs": 50,
    "train.grad_clip": 1.0,
}
#: What the tiny Primus demo presets change on top of their family's Eva settings.
PRIMUS_DEMO: dict[str, Any] = {"optim.lr": 1e-3, "optim.warmup_epochs": 1}


#: What every CPU demo preset sets on the data path: one loader worker, one validation subject is enough.
DEMO_DATA: dict[str, Any] = {"data.num_workers": 1, "data.num_val_subjects_min": 1}

#: Views cut by the method from a plain crop of the volume (upstream's plain loader for contrastive methods);
#: mirroring and rot90 are applied per view by the method's transform.
NO_PATCH_AUGMENTATION: dict[str, Any] = {"data.rotation_p": 0.0, "data.scale_p": 0.0, "data.mirror_axes": ()}


def add_demo_pair(
    label: str,
    cnn_base: str,
    eva_base: str,
    overrides: dict[str, Any],
    cnn_text: str,
    eva_text: str,
    primus_overrides: dict[str, Any] | None = None,
    cnn_overrides: dict[str, Any] | None = None,
) -> None:
    """``Demo<label>_ResEncTiny`` on ``cnn_base`` and ``Demo<label>_PrimusTiny`` on ``eva_base``: CPU-sized runs.

    Both get ``overrides`` and :data:`DEMO_DATA`; the ResEnc one also ``cnn_overrides``, the Primus one
    :data:`PRIMUS_DEMO` and ``primus_overrides``.
    """
    add_preset(
        Preset(
            f"Demo{label}_ResEncTiny",
            base=cnn_base,
            architecture="ResEncTiny",
            overrides={**DEMO_DATA, **overrides, **(cnn_overrides or {})},
            description=f"CPU demo: {cnn_text}",
        )
    )
    add_preset(
        Preset(
            f"Demo{label}_PrimusTiny",
            base=eva_base,
            architecture="PrimusTiny",
            overrides={**DEMO_DATA, **overrides, **PRIMUS_DEMO, **(primus_overrides or {})},
            description=f"CPU demo: {eva_text}",
        )
    )
