"""What a preprocessed case was made with: the plan signature stored in every case's properties.

A case depends on the plan it was made under (target spacing, ``transpose_forward``, normalization and resampling
settings, canonical orientation) and on how nnssl preprocesses (:data:`CASE_FORMAT_VERSION`). Growing a
collection and rerunning with a changed plan would otherwise mix cases made under two plans without a word.

:func:`plan_signature` collects everything of the plan that changes a case's voxels, and :func:`signature_digest`
hashes it (SHA-256 of the canonical JSON, first 16 hex digits). Every case stores both under
``properties["made_with"]`` = ``{"digest", "plans_name", "configuration", "signature"}``. Preprocessing redoes a case
whose digest differs from the current plan's (also a case from an nnssl version that stored none); training
refuses such cases with the command that redoes them (:func:`nnssl.preprocessing.api.preprocessed_images`).

Not part of the signature: ``patch_size`` (a training setting; cases do not depend on it) and
``data_identifier`` (the folder name; the case is in that folder already).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

#: Bump when preprocessing changes what a stored case holds for the same plan (so old cases are redone).
#: 2: masks binarised (label > 0 -> 1), z-score statistics in float64, truncated/sheared inputs refused.
CASE_FORMAT_VERSION = 2
#: Configuration keys that do not change a case's content.
IGNORED_CONFIGURATION_KEYS = ("patch_size", "data_identifier")
MADE_WITH_KEY = "made_with"


def plan_signature(plan: Any, configuration: str) -> dict[str, Any]:
    """Everything of ``plan`` (a :class:`nnssl.planning.plans.Plan`) that decides the voxels of a case of
    ``configuration``: the configuration's settings (less :data:`IGNORED_CONFIGURATION_KEYS`),
    ``transpose_forward``, ``canonical_orientation`` and :data:`CASE_FORMAT_VERSION`."""
    config = plan.configuration(configuration).to_dict()
    return {
        "case_format_version": CASE_FORMAT_VERSION,
        "transpose_forward": [int(a) for a in plan.transpose_forward],
        "canonical_orientation": plan.canonical_orientation,
        "configuration": {k: v for k, v in sorted(config.items()) if k not in IGNORED_CONFIGURATION_KEYS},
    }


def signature_digest(signature: dict[str, Any]) -> str:
    """First 16 hex digits of the SHA-256 of ``signature`` as canonical JSON (sorted keys, no spaces)."""
    text = json.dumps(signature, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def made_with(plan: Any, configuration: str) -> dict[str, Any]:
    """The ``properties["made_with"]`` record for cases made now under ``plan`` / ``configuration``."""
    signature = plan_signature(plan, configuration)
    return {
        "digest": signature_digest(signature),
        "plans_name": plan.plans_name,
        "configuration": configuration,
        "signature": signature,
    }


def stored_digest(properties: dict[str, Any]) -> str | None:
    """The plan digest a case's properties record, or None for a case that records none (older nnssl)."""
    record = properties.get(MADE_WITH_KEY)
    return record.get("digest") if isinstance(record, dict) else None
