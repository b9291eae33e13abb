"""Evaluation during pre-training: the dense probe on a frozen copy of the backbone every few epochs.

Turned on by ``train.eval_every_n_epochs`` > 0 with ``eval.set`` (documentation/evaluation.md). The engine calls
:meth:`TrainingEvaluator.evaluate` on rank 0 at the end of an evaluated epoch; the images are read and preprocessed
once (with the run's own adaptation plan, exactly as a downstream user would), the backbone is copied, frozen and
probed, and the scores (``probe/mean_dice``, ``probe/dice_<label>``) go into that epoch's metrics.jsonl line, the
text log and progress.png. ``eval.select_best_by = probe/mean_dice`` makes ``checkpoint_best.pth`` the epoch with the
highest score instead of the lowest validation loss.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

from torch import nn

from nnssl.config import EvalConfig

logger = logging.getLogger(__name__)


class TrainingEvaluator:
    """Probes the run's backbone on ``cfg.set``; cheap to construct, the images are read at the first evaluation."""

    def __init__(self, cfg: EvalConfig, adaptation_plan: dict[str, Any], seed: int = 0) -> None:
        from nnssl.evaluation.eval_set import load_eval_set

        self.cfg = cfg
        self.adaptation_plan = adaptation_plan
        self.seed = int(seed)
        self.eval_set = load_eval_set(cfg.set)  # validated before training starts
        if not self.eval_set.has_dense_task:
            raise ValueError(
                f"eval.set {cfg.set}: evaluation during pre-training runs the dense probe, which needs 'labels' and "
                "labelled cases in both splits."
            )
        self._prepared = None

    def evaluate(self, network: nn.Module) -> dict[str, float]:
        """Scores of a frozen copy of ``network`` (the downstream network, ``method.backbone()``)."""
        from nnssl.evaluation.api import FeatureSettings, evaluate_encoder, prepare_eval_set
        from nnssl.evaluation.encoder import FrozenEncoder

        device = next(network.parameters()).device
        if self._prepared is None:
            self._prepared = prepare_eval_set(self.eval_set, self.adaptation_plan)
        encoder = FrozenEncoder.from_network(copy.deepcopy(network), self.adaptation_plan, device=device)
        settings = FeatureSettings(
            stages=tuple(self.cfg.stages) or None, overlap=self.cfg.overlap, window_batch=self.cfg.window_batch
        )
        report = evaluate_encoder(
            encoder, self.eval_set, self._prepared, settings, max_voxels=self.cfg.max_voxels, seed=self.seed
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


__all__ = ["TrainingEvaluator"]
