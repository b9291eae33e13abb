"""SimCLR for 3D volumes as in the OpenMind benchmark (upstream ``SimCLRTrainer``), with DDP-wide negatives.

Chen et al. 2020, "A Simple Framework for Contrastive Learning of Visual Representations"; the 3D recipe
of Wald et al. 2025, "An OpenMind for 3D medical vision self-supervised learning" (methods.md 4.8).

Views (per sampled patch, ``train.patch_size``, upstream 192x192x64 in array-axis order): ``crops_per_image``
reference crops of ``crop_size`` (64^3) at uniformly random positions; each gets a partner crop whose
start differs by at most ``floor((1 - min_overlap) * p)`` voxels per axis (so the pair overlaps by at
least ``min_overlap`` of the crop on every axis). Every crop is augmented independently: random mirror on
every axis, a random number of quarter turns in the plane of array axes (0, 1) when that plane is square,
and the intensity augmentations of :class:`nnssl.transforms.intensity.IntensityAugmentation`.

Network: the backbone interface built for ``crop_size`` -> pooled encoder features
(:meth:`nnssl.backbones.Features.pooled`: multi-stage GAP, 1120-d on ResEnc-L; mean token on Primus) ->
:class:`~nnssl.methods.heads.ProjectionHead` (3 layers, 2048 hidden/out, per-vector "feature"
normalisation and ReLU as upstream's VoCo/SimCLR head).

Loss: plain NT-Xent (:func:`nnssl.losses.contrastive.nt_xent`, tau = 0.5) with the N = images x
``crops_per_image`` reference embeddings ``u`` and their partners ``v``: 2N-2 negatives per row, gathered
from all ranks under DDP. As upstream, the other reference crops of the same image are negatives
(false negatives the OpenMind authors acknowledge). Validation uses the same crops without augmentation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from nnssl.architectures import check_patch_size
from nnssl.architectures.spec import ArchitectureSpec
from nnssl.backbones import build_backbone
from nnssl.losses.contrastive import nt_xent
from nnssl.methods.base import Sample, SSLMethod, StepOutput, Transform
from nnssl.methods.heads import ProjectionHead
from nnssl.methods.registry import METHODS
from nnssl.transforms.intensity import IntensityAugmentation
from nnssl.transforms.views import crop, partner_start, random_crop_start, random_mirror_rot90


@dataclass
class SimCLRConfig:
    """SimCLR hyper-parameters (upstream defaults).

    ``crop_size``: side lengths of every view (the backbone's input size). ``crops_per_image``: reference
    crops per sampled patch, each with one partner. ``min_overlap``: minimum per-axis overlap of a pair as
    a fraction of the crop. ``head_norm``/``head_act``: normalisation and activation of the projector
    (``"feature"``/``"relu"`` as upstream; see :mod:`nnssl.methods.heads`). ``augment``: per-view mirror,
    rot90 and intensity augmentation during training.
    """

    crop_size: tuple[int, int, int] = (64, 64, 64)
    crops_per_image: int = 2
    min_overlap: float = 0.5
    temperature: float = 0.5
    hidden_dim: int = 2048
    out_dim: int = 2048
    head_norm: str = "feature"
    head_act: str = "relu"
    head_last_norm: bool = False
    augment: bool = True

    def validate(self, run: object) -> None:
        """Check ``run`` (the RunConfig) before anything starts: overlap, crop counts, crops that fit."""
        from nnssl.config import require, require_fits, require_patch_multiple
        from nnssl.methods.heads import ACTIVATIONS, NORMS

        require(0.0 <= self.min_overlap <= 1.0, "method.min_overlap", self.min_overlap, "in [0, 1]")
        require(self.crops_per_image >= 1, "method.crops_per_image", self.crops_per_image, ">= 1")
        require(self.temperature > 0, "method.temperature", self.temperature, "> 0")
        require(
            self.head_norm in NORMS or self.head_norm == "none", "method.head_norm", self.head_norm, f"one of {NORMS}"
        )
        require(self.head_act in ACTIVATIONS, "method.head_act", self.head_act, f"one of {sorted(ACTIVATIONS)}")
        require_patch_multiple(run, "method.crop_size", self.crop_size)
        require_fits("method.crop_size", self.crop_size, run)


class PairedCropTransform:
    """Per-sample views for SimCLR: ``{"views": (2K, C, *crop)}``, references first, then their partners."""

    def __init__(self, cfg: SimCLRConfig, augment: bool) -> None:
        self.cfg = cfg
        self.augment = augment
        self.intensity = IntensityAugmentation() if augment else IntensityAugmentation.none()
        self.max_shift = tuple(int(np.floor((1.0 - cfg.min_overlap) * p)) for p in cfg.crop_size)

    def _view(self, image: np.ndarray, start: tuple[int, int, int]) -> np.ndarray:
        view = crop(image, start, self.cfg.crop_size)
        if self.augment:
            view = random_mirror_rot90(view)
        return self.intensity(view)

    def __call__(self, sample: Sample) -> Sample:
        image = np.asarray(sample["image"], dtype=np.float32)
        base = image.shape[1:]
        references = [random_crop_start(base, self.cfg.crop_size) for _ in range(self.cfg.crops_per_image)]
        partners = [partner_start(base, ref, self.cfg.crop_size, self.max_shift) for ref in references]
        views = [self._view(image, start) for start in (*references, *partners)]
        return {"views": np.stack(views)}


@METHODS.register("SimCLR")
class SimCLR(SSLMethod):
    """SimCLR; ``backbone()`` is the downstream network built for ``crop_size``."""

    config_cls = SimCLRConfig
    presets_module = "nnssl.presets.contrastive"

    def __init__(
        self, cfg: SimCLRConfig, arch: ArchitectureSpec, patch_size: tuple[int, int, int], in_channels: int = 1
    ) -> None:
        super().__init__(cfg, arch, patch_size, in_channels)
        if not 0.0 <= cfg.min_overlap <= 1.0:
            raise ValueError(f"method.min_overlap must lie in [0, 1], got {cfg.min_overlap}.")
        if cfg.crops_per_image < 1:
            raise ValueError(f"method.crops_per_image must be at least 1, got {cfg.crops_per_image}.")
        crop_size = check_patch_size(arch, cfg.crop_size)
        if any(c > p for c, p in zip(crop_size, self.patch_size)):
            raise ValueError(
                f"SimCLR crops of {list(crop_size)} do not fit into train.patch_size {list(self.patch_size)}; "
                "raise train.patch_size or lower method.crop_size."
            )
        self.crop_size = crop_size
        self.net = build_backbone(arch, in_channels, crop_size)
        self.projector = ProjectionHead(
            self.net.feature_dim, cfg.hidden_dim, cfg.out_dim, 3, cfg.head_norm, cfg.head_act, cfg.head_last_norm
        )

    def network_patch_size(self) -> tuple[int, ...]:
        return self.crop_size

    def min_images_per_batch(self) -> tuple[int, str]:
        if self.cfg.crops_per_image == 1:
            return 2, "with method.crops_per_image=1 an image gives one pair, and NT-Xent needs negatives"
        return 1, ""

    def train_transform(self) -> Transform:
        return PairedCropTransform(self.cfg, augment=self.cfg.augment)

    def val_transform(self) -> Transform:
        return PairedCropTransform(self.cfg, augment=False)

    def embed(self, views: torch.Tensor) -> torch.Tensor:
        """(M, C, *crop) views -> (M, out_dim) projections."""
        return self.projector(self.net.encode(views).pooled())

    def forward(self, batch: dict[str, torch.Tensor]) -> StepOutput:
        views = batch["views"]
        b, v = views.shape[:2]
        k = v // 2
        z = self.embed(views.flatten(0, 1)).reshape(b, v, -1)
        u = z[:, :k].reshape(b * k, -1)
        w = z[:, k:].reshape(b * k, -1)
        loss, accuracy = nt_xent(u, w, self.cfg.temperature)
        return StepOutput(loss=loss, metrics={"top1": float(accuracy)})
