"""Presets: upstream trainer names (``-tr BaseMAETrainer_BS8``) as data, resolved into a :class:`RunConfig`.

A :class:`Preset` names a method, an architecture and a few dotted-key overrides, and may inherit from a
``base`` preset (the child's method/architecture replace the base's when given; overrides are merged,
child last). Resolution starts from the defaults of :mod:`nnssl.config` and the method's ``config_cls``,
applies the preset chain root first, then the command-line overrides.

Each method family registers its presets in a module of its own beside this one (:mod:`.mae`, :mod:`.aligned_mae`,
:mod:`.dino`, :mod:`.contrastive`), named by the method class's ``presets_module``; settings several families share
(upstream's CNN and Eva optimisers, the CPU demo data settings) are data in :mod:`.common`. Methods from other
installed packages register themselves and their presets through the ``nnssl.methods`` entry-point group
(:mod:`nnssl.plugins`). All of them are registered on the first lookup in :data:`PRESETS`, so importing this module
stays cheap (console scripts parse ``--help`` without torch).
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from nnssl.config import DataConfig, OptimConfig, RunConfig, TrainConfig
from nnssl.overrides import ConfigError, apply_overrides
from nnssl.registry import Registry

DEFAULT_PRESET = "BaseMAETrainer"


@dataclass(frozen=True)
class Preset:
    """A named run recipe: method, architecture and overrides, optionally on top of ``base``."""

    name: str
    method: str | None = None
    architecture: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    base: str | None = None
    description: str = ""


def _load_presets() -> None:
    """Register every method's presets, plugins' included (run on the first lookup in :data:`PRESETS`)."""
    register_method_presets()
    try:
        check_preset_bases()
    except KeyError as err:  # a plugin's broken preset must not stop nnssl; resolving it names the missing base
        logging.getLogger(__name__).warning("%s", err.args[0])


#: Filled on first use (importing :mod:`nnssl.presets` does not import the methods, torch or timm).
PRESETS: Registry[Preset] = Registry("preset", loader=_load_presets)


def add_preset(preset: Preset) -> Preset:
    """Register ``preset``; its base may be registered later (presets of one family build on another's), and
    :func:`check_preset_bases` runs once every module has registered."""
    if preset.base is None and (preset.method is None or preset.architecture is None):
        raise ValueError(f"Preset '{preset.name}' has no base, so it must name a method and an architecture.")
    PRESETS.add(preset.name, preset)
    return preset


def check_preset_bases() -> None:
    """Raise KeyError naming every registered preset whose ``base`` (or an ancestor's) is unknown or circular."""
    problems = []
    for name in PRESETS.names():
        seen, current = {name}, PRESETS.get(name)
        while current.base is not None:
            if current.base not in PRESETS:
                problems.append(f"'{current.name}' inherits from unknown preset '{current.base}'")
                break
            if current.base in seen:
                problems.append(f"'{name}' has a circular base chain through '{current.base}'")
                break
            seen.add(current.base)
            current = PRESETS.get(current.base)
    if problems:
        raise KeyError("Inconsistent presets: " + "; ".join(sorted(set(problems))) + ".")


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
        from nnssl.methods import METHODS  # imported here: importing the presets table must not load every method

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
    from nnssl.methods import METHODS

    method_cls = METHODS.get(d["method"])
    cfg = RunConfig(
        preset=d["preset"],
        method=d["method"],
        architecture=d["architecture"],
        method_cfg=method_cls.config_cls(),
    )
    flat = {f"{s}.{k}": v for s in ("train", "optim", "data", "eval", "arch") for k, v in d.get(s, {}).items()}
    flat.update({f"method.{k}": v for k, v in (d.get("method_cfg") or {}).items()})
    return apply_overrides(cfg, flat)


def config_to_dict(cfg: RunConfig) -> dict[str, Any]:
    """The JSON form of ``cfg`` (tuples become lists)."""
    from nnssl.serialization import to_jsonable

    return to_jsonable(cfg)


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


_registered_preset_modules: set[str] = set()


def register_method_presets() -> None:
    """Call ``register()`` of every registered method's ``presets_module`` once (methods sharing one: once)."""
    from nnssl.methods import METHODS

    for name in METHODS.names():
        module_name = METHODS.get(name).presets_module
        if module_name and module_name not in _registered_preset_modules:
            _registered_preset_modules.add(module_name)
            importlib.import_module(module_name).register()
