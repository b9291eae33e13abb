"""The configuration a run trains with, and what may change when it continues.

* New run: the preset's configuration, then the environment (upstream's variables), then ``--set``.
* ``--config RUN_FOLDER/config.json``: that exported configuration exactly, then ``--set``.
* ``--c``: the configuration stored in the checkpoint it continues from (not the preset as defined now); ``--set``
  may change only :data:`RESUME_CHANGEABLE` (e.g. ``train.num_epochs`` to extend a finished run). Every
  difference to the stored configuration, and to the preset as defined now, is logged.

Environment: ``nnUNet_n_proc_DA`` sets ``data.num_workers`` and ``nnUNet_compile`` (``true``/``1``/``t``)
``train.compile``, as upstream; an explicit ``--set`` of the same key wins.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from nnssl.config import ConfigError, RunConfig
from nnssl.overrides import apply_overrides, parse_override

logger = logging.getLogger(__name__)

ENV_WORKERS = "nnUNet_n_proc_DA"
ENV_COMPILE = "nnUNet_compile"
_ENV_TRUE = ("true", "1", "t")

#: Keys that ``--set`` may change when a run continues (``--c``): they do not change what was learnt so far or
#: how the remaining steps are drawn. Everything else is taken from the checkpoint.
RESUME_CHANGEABLE = (
    "train.num_epochs",
    "train.val_iterations",
    "train.save_every_epochs",
    "train.save_checkpoints",
    "train.max_consecutive_nonfinite",
    "train.compile",
    "train.trackers",
    "train.wandb_project",
    "train.wandb_mode",
    "data.num_workers",
    "train.eval_every_n_epochs",
    "eval.set",
    "eval.overlap",
    "eval.window_batch",
    "eval.stages",
    "eval.max_voxels",
    "eval.registration_set",
    "eval.registration_spacing",
)


class ResumeConfigError(ConfigError):
    """``--set`` on ``--c`` tried to change a setting the continued run cannot change."""


def environment_overrides(explicit: Sequence[str] = ()) -> list[str]:
    """``--set``-style overrides from ``nnUNet_n_proc_DA`` / ``nnUNet_compile``, unless ``explicit`` sets the key."""
    named = {parse_override(o)[0] for o in explicit}
    out = []
    workers = os.environ.get(ENV_WORKERS, "").strip()
    if workers and "data.num_workers" not in named:
        out.append(f"data.num_workers={workers}")
    compile_flag = os.environ.get(ENV_COMPILE, "").strip().lower()
    if compile_flag and "train.compile" not in named:
        out.append(f"train.compile={'true' if compile_flag in _ENV_TRUE else 'false'}")
    return out


def flatten(config: Mapping[str, Any]) -> dict[str, Any]:
    """``{"train.batch_size": 2, "method.mask_ratio": 0.75, "preset": ...}`` from a configuration's JSON form."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if key in ("train", "optim", "data", "eval", "arch", "method_cfg") and isinstance(value, Mapping):
            section = "method" if key == "method_cfg" else key
            flat.update({f"{section}.{k}": v for k, v in value.items()})
        else:
            flat[key] = value
    return flat


def config_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """``(key, old value, new value)`` for every dotted key whose value differs (missing: None)."""
    a, b = flatten(old), flatten(new)
    return [(k, a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def _format(changes: Sequence[tuple[str, Any, Any]]) -> str:
    return "; ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in changes)


def new_run_config(preset: str, overrides: Sequence[str]) -> RunConfig:
    """Preset, then the environment, then ``overrides``; environment-made changes are logged."""
    from nnssl.presets import resolve_config

    env = environment_overrides(overrides)
    if env:
        logger.info("From the environment (%s, %s): %s", ENV_WORKERS, ENV_COMPILE, ", ".join(env))
    return resolve_config(preset, [*env, *overrides])


def exported_config(path: str | Path, overrides: Sequence[str]) -> RunConfig:
    """The configuration of ``path`` (a run's ``config.json``), then ``overrides``."""
    from nnssl.presets import config_from_dict
    from nnssl.serialization import load_json

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--config {path}: no such file (give a run folder's config.json).")
    try:
        stored = load_json(path)
        cfg = config_from_dict(stored)
    except (KeyError, TypeError, ValueError) as err:
        raise ConfigError(f"--config {path} is not an nnssl run configuration: {err}") from None
    if overrides:
        cfg = apply_overrides(cfg, list(overrides))
        logger.info("Configuration from %s, changed by --set: %s", path, ", ".join(overrides))
    else:
        logger.info("Configuration from %s.", path)
    return cfg


def resume_config(stored: Mapping[str, Any], overrides: Sequence[str], source: Path) -> RunConfig:
    """The stored configuration of ``source`` with ``overrides`` (only :data:`RESUME_CHANGEABLE` keys) applied.

    Logs what ``--set`` changed and where the stored configuration differs from its preset as defined now.
    """
    from nnssl.presets import PRESETS, config_from_dict, config_to_dict, resolve_config

    try:
        base = config_from_dict(dict(stored))
    except (KeyError, TypeError, ValueError) as err:
        raise ConfigError(f"The configuration stored in {source} cannot be used: {err}") from None
    explicit = list(overrides)
    env = [o for o in environment_overrides(explicit) if parse_override(o)[0] in RESUME_CHANGEABLE]
    cfg = apply_overrides(base, [*env, *explicit])
    changes = config_changes(config_to_dict(base), config_to_dict(cfg))
    refused = [c for c in changes if c[0] not in RESUME_CHANGEABLE]
    if refused:
        raise ResumeConfigError(
            f"--c continues {source} with the configuration stored in it; these --set values would change it in "
            f"ways the continued run cannot follow: {_format(refused)}. On --c, --set may change only "
            f"{', '.join(RESUME_CHANGEABLE)}. Leave the others out, or start a new run (another -tr name or "
            "another results folder) with -pretrained_weights to start from these weights."
        )
    logger.info("--c: using the configuration stored in %s.", source)
    if changes:
        logger.warning("--c: changed on continuing: %s.", _format(changes))
    if base.preset in PRESETS:
        try:
            now = config_to_dict(resolve_config(base.preset))
        except ConfigError:
            now = None
        if now is not None:
            drift = config_changes(now, config_to_dict(base))
            if drift:
                logger.info(
                    "--c: the stored configuration differs from preset %s as defined now (kept as stored): %s.",
                    base.preset,
                    _format(drift),
                )
    return cfg
