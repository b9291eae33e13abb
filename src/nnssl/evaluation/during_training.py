"""Evaluation during pre-training: the dense probe and feature registration on a frozen copy of the backbone.

Turned on by ``train.eval_every_n_epochs`` > 0 with ``eval.set`` (the probe; documentation/evaluation.md) and/or
``eval.registration_set`` (pairs registered with the backbone's features and ConvexAdam;
documentation/registration.md). The engine calls :meth:`TrainingEvaluator.evaluate` on rank 0 at the end of an
evaluated epoch; the images are read and preprocessed once (with the run's own adaptation plan, exactly as a
downstream user would), the backbone is copied, frozen and evaluated, and the scores (``probe/mean_dice``,
``probe/dice_<label>``, ``registration/mean_dice``, ``registration/dice_<label>``, ``registration/sdlogj``,
``registration/folding_percent``) go into that epoch's metrics.jsonl line, the text log and progress.png.
``eval.select_best_by = probe/mean_dice`` or ``registration/mean_dice`` makes ``checkpoint_best.pth`` the epoch with
the highest score instead of the lowest validation loss. Affine pre-alignments of the pairs are computed once.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

from torch import nn

from nnssl.config import EvalConfig

logger = logging.getLogger(__name__)


class TrainingEvaluator:
    """Probes and/or registers with the run's backbone; cheap to construct, the images are read at the first
    evaluation."""

    def __init__(self, cfg: EvalConfig, adaptation_plan: dict[str, Any], seed: int = 0) -> None:
        from nnssl.evaluation.eval_set import load_eval_set

        self.cfg = cfg
        self.adaptation_plan = adaptation_plan
        self.seed = int(seed)
        self.eval_set = load_eval_set(cfg.set) if cfg.set else None  # validated before training starts
        if self.eval_set is not None and not self.eval_set.has_dense_task:
            raise ValueError(
                f"eval.set {cfg.set}: evaluation during pre-training runs the dense probe, which needs 'labels' and "
                "labelled cases in both splits."
            )
        self.registration_set = load_eval_set(cfg.registration_set) if cfg.registration_set else None
        if self.registration_set is not None and not self.registration_set.pairs:
            raise ValueError(f"eval.registration_set {cfg.registration_set}: the set has no 'pairs' to register.")
        if self.eval_set is None and self.registration_set is None:
            raise ValueError("evaluation during pre-training needs eval.set and/or eval.registration_set")
        self._prepared = None
        self._prepared_registration = None
        self._world_transforms: dict = {}

    def _feature_settings(self):
        from nnssl.evaluation.api import FeatureSettings

        return FeatureSettings(
            stages=tuple(self.cfg.stages) or None, overlap=self.cfg.overlap, window_batch=self.cfg.window_batch
        )

    def evaluate(self, network: nn.Module) -> dict[str, float]:
        """Scores of a frozen copy of ``network`` (the downstream network, ``method.backbone()``)."""
        from nnssl.evaluation.encoder import FrozenEncoder

        device = next(network.parameters()).device
        encoder = FrozenEncoder.from_network(copy.deepcopy(network), self.adaptation_plan, device=device)
        scores: dict[str, float] = {}
        if self.eval_set is not None:
            scores.update(self._probe(encoder))
        if self.registration_set is not None:
            scores.update(self._register(encoder))
        return scores

    def _probe(self, encoder) -> dict[str, float]:
        from nnssl.evaluation.api import evaluate_encoder, prepare_eval_set

        assert self.eval_set is not None
        if self._prepared is None:
            self._prepared = prepare_eval_set(self.eval_set, self.adaptation_plan)
        report = evaluate_encoder(
            encoder,
            self.eval_set,
            self._prepared,
            self._feature_settings(),
            max_voxels=self.cfg.max_voxels,
            seed=self.seed,
        )
        scores = report.scores()
        logger.info(
            "Probe on %s: mean Dice %.4f (%s) in %.1f s.",
            self.eval_set.name,
            scores.get("probe/mean_dice", float("nan")),
            ", ".join(f"{k.split('/', 1)[1]} {v:.3f}" for k, v in scores.items() if k != "probe/mean_dice"),
            report.seconds,
        )
        return scores

    def _register(self, encoder) -> dict[str, float]:
        from nnssl.evaluation.api import prepare_eval_set
        from nnssl.registration.evaluation import evaluate_registration
        from nnssl.registration.pipeline import plan_at_spacing

        assert self.registration_set is not None
        if self._prepared_registration is None:
            spacing = self.cfg.registration_spacing or None
            self._prepared_registration = prepare_eval_set(
                self.registration_set, plan_at_spacing(self.adaptation_plan, spacing)
            )
        return evaluate_registration(
            encoder,
            self.registration_set,
            self._prepared_registration,
            feature_settings=self._feature_settings(),  # no eval.stages: every map of stride <= 8
            world_transforms=self._world_transforms,
        )


__all__ = ["TrainingEvaluator"]
