"""The experiment plan (``nnsslPlans.json``): target spacings, axis transpose, normalization and resampling by name.

Keys are upstream nnssl's (``Plan`` / ``ConfigurationPlan``) plus ours:

* ``Plan.canonical_orientation`` ("LPS"): images are reoriented to it before ``transpose_forward`` is applied.
* ``ConfigurationPlan.storage_precision`` ("float32"): how preprocessing stores the image voxels: ``float32``
  (lossless, the default), ``float16`` or ``mantissa<N>`` (float32 keeping N of 23 mantissa bits); a user's choice,
  see :class:`nnssl.data.case_store.StoreFormat`.
* ``ConfigurationPlan.normalization_by_modality`` (default ``{}``; e.g. ``{"CT": "CTNormalization"}``): per-modality
  scheme, matched case-insensitively; other modalities use ``normalization_schemes``.

Normalization defaults to what nnU-Net's pre-trained fine-tuning does (``nnUNetv2_preprocess_like_nnssl``): every
channel and modality, CT included, ``ZScoreNormalization`` with ``use_mask_for_norm = [False]`` (statistics of the
whole cropped volume), as upstream nnssl. The configuration, and so these keys, is stored in the adaptation plan's
``pretrain_plan``, so a fine-tuning run can read how its pre-training data was normalized.

Spacings in a configuration (and ``original_median_spacing_after_transp``) are in the axis order *after*
``transpose_forward``, like upstream's. Files written by upstream nnssl load unchanged (our keys take defaults).
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nnssl.paths import preprocessed_folder
from nnssl.serialization import load_json, save_json

DEFAULT_PLANS_NAME = "nnsslPlans"
CONFIGURATION_NAMES = ("onemmiso", "median", "noresample")
DEFAULT_PATCH_SIZE = (160, 160, 160)
RESAMPLING_FN = "resample_data_or_seg_to_shape"


def _data_kwargs() -> dict[str, Any]:
    return {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None}


def _mask_kwargs() -> dict[str, Any]:
    return {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None}


def check_storage_precision(precision: str) -> str:
    """``precision`` if it names a storage precision, else ValueError listing them."""
    from nnssl.data.case_store import image_dtype

    image_dtype(precision)
    return precision


class PlanError(ValueError):
    """A plans file or dict that is not a valid plan; the message names the file and the key."""


@dataclass
class ConfigurationPlan:
    """How one configuration (``onemmiso``, ``median``, ``noresample``) is preprocessed."""

    data_identifier: str
    preprocessor_name: str = "DefaultPreprocessor"
    spacing_style: str = "onemmiso"
    normalization_schemes: list[str] = field(default_factory=lambda: ["ZScoreNormalization"])
    use_mask_for_norm: list[bool] = field(default_factory=lambda: [False])
    resampling_fn_data: str = RESAMPLING_FN
    resampling_fn_data_kwargs: dict[str, Any] = field(default_factory=_data_kwargs)
    resampling_fn_mask: str = RESAMPLING_FN
    resampling_fn_mask_kwargs: dict[str, Any] = field(default_factory=_mask_kwargs)
    spacing: list[float] | None = None
    patch_size: list[int] | None = field(default_factory=lambda: list(DEFAULT_PATCH_SIZE))
    normalization_by_modality: dict[str, str] = field(default_factory=dict)
    storage_precision: str = "float32"

    def normalization_for(self, modality: str, channel: int = 0) -> str:
        """The normalization scheme name for an image of ``modality`` (case-insensitive match), channel ``channel``."""
        for key, scheme in self.normalization_by_modality.items():
            if key.lower() == str(modality).lower():
                return scheme
        return self.normalization_schemes[min(channel, len(self.normalization_schemes) - 1)]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict with upstream's key order followed by ours."""
        return copy.deepcopy(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: Any, where: str = "configuration") -> ConfigurationPlan:
        """Inverse of :meth:`to_dict`; missing or unknown keys raise :class:`PlanError` naming ``where``."""
        if not isinstance(data, dict):
            raise PlanError(f"{where}: expected an object, got {type(data).__name__}.")
        _check_keys(data, cls, where, optional=("normalization_by_modality", "patch_size", "storage_precision"))
        try:
            check_storage_precision(data.get("storage_precision", "float32"))
        except ValueError as err:
            raise PlanError(f"{where}: storage_precision: {err}") from None
        return cls(**copy.deepcopy(data))


@dataclass
class Plan:
    """The whole ``nnsslPlans.json``."""

    dataset_name: str
    plans_name: str
    original_median_spacing_after_transp: list[float]
    image_reader_writer: str
    transpose_forward: list[int]
    transpose_backward: list[int]
    configurations: dict[str, ConfigurationPlan]
    experiment_planner_used: str
    canonical_orientation: str = "LPS"

    def configuration(self, name: str) -> ConfigurationPlan:
        """The configuration ``name``; an unknown name raises KeyError listing the planned ones."""
        if name not in self.configurations:
            close = difflib.get_close_matches(name, self.configurations, n=3, cutoff=0.5)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise KeyError(
                f"Plans '{self.plans_name}' of {self.dataset_name} have no configuration '{name}'.{hint} "
                f"Planned: {sorted(self.configurations)}."
            )
        return self.configurations[name]

    def restricted_to(self, name: str, patch_size: list[int] | None = None) -> Plan:
        """A copy holding only configuration ``name`` (optionally with another patch size), as adaptation plans need."""
        config = copy.deepcopy(self.configuration(name))
        if patch_size is not None:
            config.patch_size = [int(p) for p in patch_size]
        return dataclasses.replace(copy.deepcopy(self), configurations={name: config})

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict; upstream's keys first, in upstream's order."""
        out = {f.name: copy.deepcopy(getattr(self, f.name)) for f in dataclasses.fields(self)}
        out["configurations"] = {k: v.to_dict() for k, v in self.configurations.items()}
        return out

    @classmethod
    def from_dict(cls, data: Any, source: str | os.PathLike[str] | None = None) -> Plan:
        """Build and check a plan; problems raise :class:`PlanError` naming ``source`` and the key."""
        where = str(source) if source is not None else "plan"
        if not isinstance(data, dict):
            raise PlanError(f"{where}: expected a JSON object, got {type(data).__name__}.")
        _check_keys(data, cls, where, optional=("canonical_orientation",))
        configs = data["configurations"]
        if not isinstance(configs, dict) or not configs:
            raise PlanError(f"{where}: 'configurations' must be a non-empty object.")
        values = dict(data)
        values["configurations"] = {
            k: ConfigurationPlan.from_dict(v, f"{where}: configurations.{k}") for k, v in configs.items()
        }
        plan = cls(**values)
        forward, backward = list(plan.transpose_forward), list(plan.transpose_backward)
        if sorted(forward) != [0, 1, 2]:
            raise PlanError(f"{where}: transpose_forward {forward} is not a permutation of [0, 1, 2].")
        if [forward[b] for b in backward] != [0, 1, 2]:
            raise PlanError(f"{where}: transpose_backward {backward} is not the inverse of {forward}.")
        return plan

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the plan as JSON (atomically)."""
        save_json(self.to_dict(), path)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Plan:
        """Read a plans file; a missing file or invalid content raises an error naming it."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"Plans file {path} does not exist. Create it with nnssl_plan_experiment -d ID.")
        return cls.from_dict(load_json(path), source=path)


def _check_keys(data: dict[str, Any], cls: type, where: str, optional: tuple[str, ...]) -> None:
    names = [f.name for f in dataclasses.fields(cls)]
    missing = [n for n in names if n not in data and n not in optional]
    unknown = sorted(set(data) - set(names))
    if missing or unknown:
        raise PlanError(f"{where}: missing keys {missing}, unknown keys {unknown} (valid keys: {names}).")


def plans_path(dataset_name: str, plans_name: str = DEFAULT_PLANS_NAME) -> Path:
    """``$nnssl_preprocessed/<dataset_name>/<plans_name>.json``."""
    return preprocessed_folder() / dataset_name / f"{plans_name}.json"


def load_plans(dataset_name: str, plans_name: str = DEFAULT_PLANS_NAME) -> Plan:
    """The plan of a dataset from its standard location."""
    return Plan.load(plans_path(dataset_name, plans_name))
