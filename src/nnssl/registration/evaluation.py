"""Registration Dice of an encoder on the labelled pairs of an evaluation set (``nnssl_probe``-style scores).

Used by the evaluation during pre-training (``eval.registration_set``; documentation/registration.md): every pair
of the set is registered with the encoder's features (:func:`nnssl.registration.pipeline.register_prepared`) and
the scores are ``registration/mean_dice`` (mean over pairs of the mean Dice over labels after registration; higher
is better, what ``eval.select_best_by`` may name), ``registration/dice_<label>``, ``registration/sdlogj`` and
``registration/folding_percent`` (means over pairs). The affine pre-alignments do not depend on the encoder: they are
computed once and kept in ``world_transforms``.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from nnssl.evaluation.eval_set import EvalSet
from nnssl.evaluation.images import PreparedImage
from nnssl.evaluation.probes import nanmean
from nnssl.registration.geometry import affine_prealignment
from nnssl.registration.pipeline import RegistrationSettings, register_prepared

logger = logging.getLogger(__name__)


def evaluate_registration(
    encoder,
    eval_set: EvalSet,
    prepared: dict[str, PreparedImage],
    settings: RegistrationSettings | None = None,
    feature_settings=None,
    world_transforms: dict[tuple[str, str], np.ndarray] | None = None,
) -> dict[str, float]:
    """Scores of ``encoder`` (None: MIND-SSC) on ``eval_set.pairs``; see the module docstring."""
    if not eval_set.pairs:
        raise ValueError(f"evaluation set {eval_set.name} has no 'pairs' to register")
    started = time.perf_counter()
    settings = settings or RegistrationSettings()
    cache = world_transforms if world_transforms is not None else {}
    names = {v: n for n, v in eval_set.labels.items()}
    per_pair: list[dict[str, Any]] = []
    for pair in eval_set.pairs:
        fixed, moving = prepared[pair.fixed], prepared[pair.moving]
        key = (pair.fixed, pair.moving)
        if pair.affine and key not in cache:
            cache[key] = affine_prealignment(fixed.data[0], fixed.affine, moving.data[0], moving.affine)
        result = register_prepared(
            fixed,
            moving,
            encoder,
            settings,
            feature_settings=feature_settings,
            label_names=names,
            device=encoder.device if encoder is not None else "cpu",
            world_transform=cache.get(key),
        )
        per_pair.append(result.metrics)
    scores: dict[str, float] = {
        "registration/mean_dice": nanmean([m["mean_dice_after"] for m in per_pair]),
        "registration/sdlogj": float(np.mean([m["sdlogj"] for m in per_pair])),
        "registration/folding_percent": float(np.mean([m["folding_percent"] for m in per_pair])),
    }
    for name in sorted({n for m in per_pair for n in m["dice_after"]}):
        scores[f"registration/dice_{name}"] = nanmean([m["dice_after"].get(name, float("nan")) for m in per_pair])
    logger.info(
        "Registration on %s (%d pair(s)): mean Dice %.4f (before %.4f), SDlogJ %.3f, folding %.4f%% in %.1f s.",
        eval_set.name,
        len(per_pair),
        scores["registration/mean_dice"],
        nanmean([m.get("mean_dice_after_affine", m["mean_dice_before"]) for m in per_pair]),
        scores["registration/sdlogj"],
        scores["registration/folding_percent"],
        time.perf_counter() - started,
    )
    return scores


__all__ = ["evaluate_registration"]
