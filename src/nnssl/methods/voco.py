"""VoCo: volume contrastive learning by predicting where a crop lies among base crops, with an EMA teacher.

Wu et al. 2024, "VoCo: A Simple-yet-Effective Volume Contrastive Learning Framework for 3D Medical Image
Analysis" (CVPR); upstream nnssl ``VoCoTrainer`` (methods.md 4.5). Formulas in :mod:`nnssl.losses.voco`.

Views (per sampled patch): the patch is tiled into non-overlapping **base crops** of ``crop_size``
(256x256x64 -> 4x4x1 = 16 crops of 64^3); ``num_targets`` **target crops** of the same size lie at uniformly
random positions inside the patch. The label ``y_tb = |target_t ∩ base_b| / |crop|`` (rows sum to 1). Every
crop is augmented independently (mirror, rot90 in the plane of array axes (0, 1), intensity
augmentations); the labels depend only on the positions.

Embeddings: the backbone interface's pooled encoder features (multi-stage GAP on ResEnc, mean token on
Primus) -> :class:`~nnssl.methods.heads.ProjectionHead` (2048, "feature" norm, ReLU as upstream).

Why a teacher (upstream issue #22, "VoCo loss does not decrease"): upstream computes every embedding with
the one network it trains and stops the gradient of the base embeddings, so the bases the targets are
compared with move with each step, and the regulariser pushes exactly those bases apart. The authors' code
(Luffy03/VoCo ``VoCoHead``) keeps a momentum teacher: the student embeds all crops, an EMA copy embeds all
crops without gradient, and the similarities are ``s = (ReLU cos(e_t^S, e_b^T) + ReLU cos(e_t^T, e_b^S)) / 2``
with the regulariser on the student's bases. We do the same: ``theta_T <- m theta_T + (1 - m) theta_S``
after every optimizer step (``teacher_momentum``, constant; the VoCo code uses 0.9;
:class:`nnssl.methods.teacher.EMATeacher`: out of DDP, in eval mode, re-copied after ``-pretrained_weights``).
``symmetric=False`` keeps only the first term (targets from the student, bases from the
teacher). Loss ``L = w_pos L_pos + w_neg L_neg + w_reg L_reg`` (1, 1, 1).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from nnssl.architectures import check_patch_size
from nnssl.architectures.spec import ArchitectureSpec
from nnssl.backbones import build_backbone
from nnssl.losses.voco import (
    overlap_correlation,
    position_hit_rate,
    relu_cosine,
    voco_prediction_losses,
    voco_regularization,
)
from nnssl.methods.base import Sample, SSLMethod, StepOutput, Transform
from nnssl.methods.heads import ProjectionHead
from nnssl.methods.registry import METHODS
from nnssl.methods.teacher import EMATeacher
from nnssl.transforms.intensity import IntensityAugmentation
from nnssl.transforms.views import crop, grid_starts, overlap_fraction_matrix, random_crop_start, random_mirror_rot90


@dataclass
class VoCoConfig:
    """VoCo hyper-parameters.

    ``crop_size``: side of base and target crops (the backbone's input); ``train.patch_size`` must be a whole
    number of crops per axis. ``num_targets``: random target crops per patch. ``teacher_momentum``: EMA
    momentum of the teacher (constant). ``symmetric``: average the student-target/teacher-base and
    teacher-target/student-base similarities (VoCo code). ``reg_power``: 2 (VoCo code, default) or 1 (nnssl).
    """

    crop_size: tuple[int, int, int] = (64, 64, 64)
    num_targets: int = 4
    teacher_momentum: float = 0.9
    symmetric: bool = True
    hidden_dim: int = 2048
    out_dim: int = 2048
    head_norm: str = "batch_no_stats"
    head_act: str = "relu"
    head_last_norm: bool = False
    pos_weight: float = 1.0
    neg_weight: float = 1.0
    reg_weight: float = 1.0
    reg_power: int = 2
    augment: bool = True

    def validate(self, run: object) -> None:
        """Check ``run`` (the RunConfig) before anything starts: the patch is >= 2 whole crops the backbone accepts."""
        from nnssl.config import require, require_patch_multiple
        from nnssl.methods.heads import ACTIVATIONS, NORMS

        require(self.num_targets >= 1, "method.num_targets", self.num_targets, ">= 1")
        require(0.0 <= self.teacher_momentum < 1.0, "method.teacher_momentum", self.teacher_momentum, "in [0, 1)")
        require(self.reg_power in (1, 2), "method.reg_power", self.reg_power, "1 or 2")
        require(
            self.head_norm in NORMS or self.head_norm == "none", "method.head_norm", self.head_norm, f"one of {NORMS}"
        )
        require(self.head_act in ACTIVATIONS, "method.head_act", self.head_act, f"one of {sorted(ACTIVATIONS)}")
        require_patch_multiple(run, "method.crop_size", self.crop_size)
        patch = tuple(run.train.patch_size)
        require(
            all(p % c == 0 for p, c in zip(patch, self.crop_size))
            and int(np.prod([p // c for p, c in zip(patch, self.crop_size)])) >= 2,
            "train.patch_size",
            patch,
            f"a whole number of method.crop_size={tuple(self.crop_size)} crops on every axis, at least 2 in all "
            "(upstream: 256,256,64 with 64,64,64)",
        )


class VoCoTransform:
    """Per-sample ``{"views": (N_b + T, C, *crop), "overlap": (T, N_b)}``: base crops first, then targets."""

    def __init__(self, cfg: VoCoConfig, patch_size: tuple[int, int, int], augment: bool) -> None:
        self.cfg = cfg
        self.augment = augment
        self.bases = grid_starts(patch_size, cfg.crop_size)
        self.intensity = IntensityAugmentation() if augment else IntensityAugmentation.none()

    def _view(self, image: np.ndarray, start) -> np.ndarray:
        view = crop(image, start, self.cfg.crop_size)
        if self.augment:
            view = random_mirror_rot90(view)
        return self.intensity(view)

    def __call__(self, sample: Sample) -> Sample:
        image = np.asarray(sample["image"], dtype=np.float32)
        base = image.shape[1:]
        covered = tuple(int(v) for v in self.bases.max(axis=0) + np.asarray(self.cfg.crop_size))
        if covered != tuple(base):
            raise ValueError(f"VoCo expected patches of {list(covered)}, got {list(base)}.")
        targets = np.array([random_crop_start(base, self.cfg.crop_size) for _ in range(self.cfg.num_targets)])
        views = [self._view(image, s) for s in self.bases] + [self._view(image, s) for s in targets]
        overlap = overlap_fraction_matrix(targets, self.bases, self.cfg.crop_size)
        return {"views": np.stack(views), "overlap": overlap}


@METHODS.register("VoCo")
class VoCo(SSLMethod):
    """VoCo with an EMA teacher; ``backbone()`` is the student's downstream network built for ``crop_size``."""

    config_cls = VoCoConfig
    presets_module = "nnssl.presets.contrastive"

    def __init__(
        self, cfg: VoCoConfig, arch: ArchitectureSpec, patch_size: tuple[int, int, int], in_channels: int = 1
    ) -> None:
        super().__init__(cfg, arch, patch_size, in_channels)
        crop_size = check_patch_size(arch, cfg.crop_size)
        if any(p % c for p, c in zip(self.patch_size, crop_size)):
            raise ValueError(
                f"VoCo tiles train.patch_size {list(self.patch_size)} into base crops of {list(crop_size)}: every side "
                "must be a multiple of the crop side (upstream: patch 256,256,64 with crops 64,64,64)."
            )
        if cfg.num_targets < 1:
            raise ValueError(f"method.num_targets must be at least 1, got {cfg.num_targets}.")
        if not 0.0 <= cfg.teacher_momentum < 1.0:
            raise ValueError(f"method.teacher_momentum must lie in [0, 1), got {cfg.teacher_momentum}.")
        self.crop_size = crop_size
        self.num_bases = int(np.prod([p // c for p, c in zip(self.patch_size, crop_size)]))
        if self.num_bases < 2:
            raise ValueError("VoCo needs at least 2 base crops: make train.patch_size larger than method.crop_size.")
        net = build_backbone(arch, in_channels, crop_size)
        projector = ProjectionHead(
            net.feature_dim, cfg.hidden_dim, cfg.out_dim, 3, cfg.head_norm, cfg.head_act, last_norm=cfg.head_last_norm
        )
        self.student = nn.ModuleDict({"net": net, "projector": projector})
        self.teacher = EMATeacher(self.student, cfg.teacher_momentum)

    def network_patch_size(self) -> tuple[int, ...]:
        return self.crop_size

    def train_transform(self) -> Transform:
        return VoCoTransform(self.cfg, self.patch_size, augment=self.cfg.augment)

    def val_transform(self) -> Transform:
        return VoCoTransform(self.cfg, self.patch_size, augment=False)

    def _embed(self, modules: nn.ModuleDict, views: torch.Tensor) -> torch.Tensor:
        return modules["projector"](modules["net"].encode(views).pooled())

    def forward(self, batch: dict[str, torch.Tensor]) -> StepOutput:
        views, overlap = batch["views"], batch["overlap"]
        b, v = views.shape[:2]
        n = self.num_bases
        flat = views.flatten(0, 1)
        student = self._embed(self.student, flat).reshape(b, v, -1)
        with torch.no_grad():
            teacher = self._embed(self.teacher, flat).reshape(b, v, -1)
        similarity = relu_cosine(student[:, n:], teacher[:, :n])
        if self.cfg.symmetric:
            similarity = 0.5 * (similarity + relu_cosine(teacher[:, n:], student[:, :n]))
        pos, neg = voco_prediction_losses(similarity, overlap)
        reg = voco_regularization(student[:, :n], self.cfg.reg_power)
        loss = self.cfg.pos_weight * pos + self.cfg.neg_weight * neg + self.cfg.reg_weight * reg
        predicted = similarity.detach()
        metrics = {
            "pos": float(pos.detach()),
            "neg": float(neg.detach()),
            "reg": float(reg.detach()),
            "overlap_mae": float((predicted - overlap.float()).abs().mean()),
            "hit_at_1": position_hit_rate(predicted, overlap),
            "overlap_correlation": overlap_correlation(predicted, overlap),
        }
        return StepOutput(loss=loss, metrics=metrics)
