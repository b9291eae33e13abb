"""Presets: upstream trainer names (``-tr BaseMAETrainer_BS8``) as data, resolved into a :class:`RunConfig`.

A :class:`Preset` names a method, an architecture and a few dotted-key overrides, and may inherit from a
``base`` preset (the child's method/architecture replace the base's when given; overrides are merged,
child last). Resolution starts from the defaults of :mod:`nnssl.config` and the method's ``config_cls``,
applies the preset chain root first, then the command-line overrides.

Upstream's one-liner subclasses become generated names: ``<base>_BS<b>`` for every batch size upstream
used and ``<base>_BS8_<n>ep`` for every epoch count, for both the CNN (``BaseMAETrainer``, ResEnc-L) and
the Primus (``BaseEvaMAETrainer``, Primus-M) families. ``DemoMAE_*`` presets are tiny CPU runs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from nnssl.config import DataConfig, OptimConfig, RunConfig, TrainConfig
from nnssl.methods import METHODS
from nnssl.overrides import ConfigError, apply_overrides
from nnssl.registry import Registry

DEFAULT_PRESET = "BaseMAETrainer"

#: Batch sizes and epoch counts of upstream's variant classes (upstream-nnssl.md 5.5).
UPSTREAM_BATCH_SIZES = (1, 2, 4, 6, 7, 8, 10, 16, 24, 28, 32)
UPSTREAM_EPOCHS = (5, 100, 250, 500, 1000, 2000, 3000, 4000)


@dataclass(frozen=True)
class Preset:
    """A named run recipe: method, architecture and overrides, optionally on top of ``base``."""

    name: str
    method: str | None = None
    architecture: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    base: str | None = None
    description: str = ""


PRESETS: Registry[Preset] = Registry("preset")


def add_preset(preset: Preset) -> Preset:
    """Register ``preset`` (its base must already be registered)."""
    if preset.base is not None and preset.base not in PRESETS:
        raise KeyError(f"Preset '{preset.name}' inherits from unknown preset '{preset.base}'.")
    if preset.base is None and (preset.method is None or preset.architecture is None):
        raise ValueError(f"Preset '{preset.name}' has no base, so it must name a method and an architecture.")
    PRESETS.add(preset.name, preset)
    return preset


def preset_chain(name: str) -> list[Preset]:
    """The preset named ``name`` and its ancestors, root first."""
    chain = [PRESETS.get(name)]
    while chain[-1].base is not None:
        chain.append(PRESETS.get(chain[-1].base))
    return chain[::-1]


def flatten_preset(name: str) -> tuple[str, str, dict[str, Any]]:
    """``(method, architecture, merged overrides)`` of a preset after inheritance."""
    method = architecture = None
    overrides: dict[str, Any] = {}
    for preset in preset_chain(name):
        method = preset.method or method
        architecture = preset.architecture or architecture
        overrides.update(preset.overrides)
    assert method is not None and architecture is not None
    return method, architecture, overrides


def resolve_config(preset_name: str, overrides: Sequence[str] = (), method_config_cls: type | None = None) -> RunConfig:
    """The :class:`RunConfig` of ``preset_name`` with command-line ``overrides`` (``"a.b=c"``) applied.

    ``method_cfg`` is an instance of the method's ``config_cls`` (``method_config_cls`` replaces the
    registry lookup, for methods that are not registered). Unknown keys raise :class:`ConfigError`.
    """
    method, architecture, preset_overrides = flatten_preset(preset_name)
    if method_config_cls is None:
        if method not in METHODS:
            raise ConfigError(
                f"Preset '{preset_name}' uses method '{method}', which is not registered "
                f"(registered methods: {', '.join(METHODS.names()) or 'none'})."
            )
        method_config_cls = METHODS.get(method).config_cls
    cfg = RunConfig(
        preset=preset_name,
        method=method,
        architecture=architecture,
        train=TrainConfig(),
        optim=OptimConfig(),
        data=DataConfig(),
        method_cfg=method_config_cls(),
    )
    try:
        cfg = apply_overrides(cfg, preset_overrides)
    except ConfigError as err:
        raise ConfigError(f"Preset '{preset_name}' is inconsistent: {err}") from None
    return apply_overrides(cfg, list(overrides))


def config_from_dict(d: dict[str, Any]) -> RunConfig:
    """Rebuild a :class:`RunConfig` from its JSON form (``config.json`` or a checkpoint's ``config``)."""
    method_cls = METHODS.get(d["method"])
    cfg = RunConfig(
        preset=d["preset"],
        method=d["method"],
        architecture=d["architecture"],
        method_cfg=method_cls.config_cls(),
    )
    flat = {f"{s}.{k}": v for s in ("train", "optim", "data") for k, v in d.get(s, {}).items()}
    flat.update({f"method.{k}": v for k, v in (d.get("method_cfg") or {}).items()})
    return apply_overrides(cfg, flat)


def config_to_dict(cfg: RunConfig) -> dict[str, Any]:
    """The JSON form of ``cfg`` (tuples become lists)."""
    from nnssl.serialization import to_jsonable

    return to_jsonable(cfg)


def _register_defaults() -> None:
    cnn = {
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
    add_preset(
        Preset(
            "BaseMAETrainer",
            method="MAE",
            architecture="ResEncL",
            overrides=cnn,
            description="MAE on ResEnc-L, upstream CNN defaults (SGD, poly, 1000x250, batch 2, 160^3).",
        )
    )
    add_preset(
        Preset(
            "BaseEvaMAETrainer",
            base="BaseMAETrainer",
            architecture="PrimusM",
            overrides={
                "optim.name": "adamw",
                "optim.lr": 3e-4,
                "optim.weight_decay": 5e-2,
                "optim.betas": (0.9, 0.98),
                "optim.schedule": "warmup_poly",
                "optim.warmup_epochs": 50,
                "train.grad_clip": 1.0,
            },
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
        "data.num_workers": 1,
        "data.num_val_subjects_min": 1,
    }
    add_preset(
        Preset(
            "DemoMAE_ResEncTiny",
            base="BaseMAETrainer",
            architecture="ResEncTiny",
            overrides=demo,
            description="CPU demo: MAE on a tiny ResEnc, 48^3 patches, 12 epochs x 20 iterations.",
        )
    )
    add_preset(
        Preset(
            "DemoMAE_PrimusTiny",
            base="BaseEvaMAETrainer",
            architecture="PrimusTiny",
            overrides={**demo, "optim.lr": 1e-3, "optim.warmup_epochs": 1},
            description="CPU demo: MAE on a tiny Primus, 48^3 patches, 12 epochs x 20 iterations, 1 warm-up epoch.",
        )
    )


def preset_table() -> list[tuple[str, str, str, str]]:
    """``(name, method, architecture, description)`` for every preset, sorted by name."""
    rows = []
    for name in PRESETS.names():
        method, architecture, _ = flatten_preset(name)
        rows.append((name, method, architecture, PRESETS.get(name).description))
    return rows


def with_overrides(cfg: RunConfig, **sections: dict[str, Any]) -> RunConfig:
    """Convenience for code and tests: ``with_overrides(cfg, train={"num_epochs": 2})``."""
    flat = {f"{section}.{k}": v for section, values in sections.items() for k, v in values.items()}
    return apply_overrides(dataclasses.replace(cfg), flat)


_register_defaults()
