"""Dotted-key overrides (``train.batch_size=4``, ``method.mask_ratio=0.6``) applied onto a :class:`RunConfig`.

Keys are ``<section>.<field>`` with section ``train``, ``optim``, ``data``, ``eval``, ``arch`` (the dataclasses of
:mod:`nnssl.config`) or ``method`` (the fields of the method's own ``config_cls`` instance in
``RunConfig.method_cfg``). Values given as strings (the command line) are converted to the field's
annotated type: ``int``, ``float``, ``bool`` (``true/false/1/0/yes/no``), ``str``, tuples
(``160,160,160``, ``(0.9,0.98)`` or ``[1,2]``) and ``None`` (``none``/``null``) for optional fields.
Values given as Python objects (presets) are checked against the same types. An unknown key is an
error that lists the closest valid keys; the result is checked by :meth:`nnssl.config.RunConfig.validate`.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any

from nnssl.config import ConfigError, RunConfig

SECTIONS = ("train", "optim", "data", "eval", "arch", "method")
_TRUE = {"true", "1", "yes", "y", "on"}
_FALSE = {"false", "0", "no", "n", "off"}
_NONE = {"none", "null"}


def parse_override(text: str) -> tuple[str, str]:
    """Split ``"section.field=value"`` into ``("section.field", "value")``."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"Override '{text}' is not of the form section.field=value (e.g. optim.lr=1e-3).")
    return key, value.strip()


def _section_object(cfg: RunConfig, section: str) -> Any:
    return cfg.method_cfg if section == "method" else getattr(cfg, section)


def valid_keys(cfg: RunConfig) -> list[str]:
    """Every key that :func:`apply_overrides` accepts for ``cfg``."""
    keys = []
    for section in SECTIONS:
        obj = _section_object(cfg, section)
        if obj is not None and dataclasses.is_dataclass(obj):
            keys.extend(f"{section}.{f.name}" for f in dataclasses.fields(obj))
    return keys


def _unknown_key(key: str, keys: list[str]) -> ConfigError:
    close = difflib.get_close_matches(key, keys, n=5, cutoff=0.5)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    return ConfigError(f"Unknown configuration key '{key}'.{hint} Valid keys: {', '.join(keys)}.")


def _split_union(tp: Any) -> tuple[list[Any], bool]:
    """The non-None members of a (possibly optional) type and whether None is allowed."""
    origin = typing.get_origin(tp)
    if origin is typing.Union or (hasattr(types, "UnionType") and isinstance(tp, types.UnionType)):
        members = [a for a in typing.get_args(tp) if a is not type(None)]
        return members, len(members) < len(typing.get_args(tp))
    return [tp], tp is type(None) or tp is Any


def _split_sequence_text(text: str) -> list[str]:
    inner = text.strip()
    if inner[:1] in "([" and inner[-1:] in ")]":
        inner = inner[1:-1]
    return [part.strip() for part in inner.split(",") if part.strip()]


def _coerce_scalar(value: Any, tp: Any, key: str) -> Any:
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise ConfigError(f"'{key}' needs true or false, got {value!r}.")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"'{key}' needs an integer, got {value!r}.")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                number = None
            if number is not None and number.is_integer():
                return int(number)
        raise ConfigError(f"'{key}' needs an integer, got {value!r}.")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"'{key}' needs a number, got {value!r}.")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"'{key}' needs a string, got {value!r}.")
    raise ConfigError(f"'{key}' has a type ({tp}) that cannot be set from an override.")


def coerce_value(value: Any, tp: Any, key: str) -> Any:
    """Convert ``value`` (string from the command line, or a Python value) to annotated type ``tp``."""
    members, optional = _split_union(tp)
    is_none_text = isinstance(value, str) and value.strip().lower() in _NONE
    if value is None or (is_none_text and (optional or str not in members)):
        if optional:
            return None
        raise ConfigError(f"'{key}' cannot be None.")
    errors = []
    for member in members:
        try:
            if typing.get_origin(member) is tuple:
                return _coerce_tuple(value, member, key)
            return _coerce_scalar(value, member, key)
        except ConfigError as err:
            errors.append(str(err))
    raise ConfigError(errors[0] if len(errors) == 1 else f"'{key}': cannot use {value!r} ({'; '.join(errors)}).")


def _coerce_tuple(value: Any, tp: Any, key: str) -> tuple:
    args = typing.get_args(tp)
    if isinstance(value, str):
        items: list[Any] = _split_sequence_text(value)
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        raise ConfigError(f"'{key}' needs a comma-separated list such as 1,2,3, got {value!r}.")
    if len(args) == 2 and args[1] is Ellipsis:
        return tuple(_coerce_scalar(v, args[0], key) for v in items)
    if len(items) != len(args):
        raise ConfigError(f"'{key}' needs {len(args)} comma-separated values, got {len(items)} ({value!r}).")
    return tuple(_coerce_scalar(v, a, key) for v, a in zip(items, args))


def _field_types(obj: Any) -> dict[str, Any]:
    return typing.get_type_hints(type(obj))


def apply_overrides(cfg: RunConfig, overrides: Mapping[str, Any] | Iterable[str]) -> RunConfig:
    """Return a copy of ``cfg`` with every override applied (``{"optim.lr": 1e-3}`` or ``["optim.lr=1e-3"]``)."""
    items = list(overrides.items()) if isinstance(overrides, Mapping) else [parse_override(o) for o in overrides]
    new = dataclasses.replace(
        cfg,
        train=dataclasses.replace(cfg.train),
        optim=dataclasses.replace(cfg.optim),
        data=dataclasses.replace(cfg.data),
        arch=dataclasses.replace(cfg.arch),
        eval=dataclasses.replace(cfg.eval),
        method_cfg=dataclasses.replace(cfg.method_cfg) if dataclasses.is_dataclass(cfg.method_cfg) else cfg.method_cfg,
    )
    keys = valid_keys(new)
    for key, value in items:
        section, _, name = key.partition(".")
        if key not in keys:
            if section == "method" and new.method_cfg is None:
                raise ConfigError(
                    f"Cannot set '{key}': method '{new.method}' is not registered, so its configuration is unknown."
                )
            raise _unknown_key(key, keys)
        target = _section_object(new, section)
        setattr(target, name, coerce_value(value, _field_types(target)[name], key))
    new.validate()
    return new
