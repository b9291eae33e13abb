"""The SwinUNETR pre-training pretext (rotation + contrastive + in-painting) on any backbone family.

Tang et al. 2022, "Self-Supervised Pre-Training of Swin Transformers for 3D Medical Image Analysis" (CVPR); the 3D
benchmark recipe of Wald et al. 2025, "An OpenMind for 3D medical vision self-supervised learning" (upstream
``SwinUNETRTrainer`` on ResEnc-L, ``SwinUNETREvaTrainer`` on Primus-M; methods.md 4.7).

Views (transform, per sample): two copies of the crop, each turned by ``k_v`` quarter turns, ``k_v ~ U{0..3}``, in
the plane of ``rotation_plane`` (spatial axes (1, 2) as upstream's array axes (2, 3) of a (C, X, Y, Z) sample).

Cut-outs (``forward``, on the batch of 2B rotated views ``x``): per view, random boxes (sides between
``min_box_fraction`` and ``max_box_fraction`` of each axis, clipped at the border) are filled with N(0, 1) noise,
i.e. noise in the z-scored domain (upstream min-max scales its noise to [0, 1]), until the boxes' voxels add up to
``U(0, max_drop)`` of the volume; then, when a view drawn uniformly from the same set of views (first or second)
is another case's, a second round of boxes copies that case's voxels. ``C`` marks every replaced voxel.

Network: the backbone's whole-input reconstruction of the cut-out views (ResEnc U-Net; Primus: encoder tokens
straight into ``PatchDecode``) and the pooled features of that pass, standardised over the (global) batch without
running statistics (``head_norm``), feed two linear heads, rotation (4 classes) and contrastive (``contrast_dim``,
512). The pooled features of instance-normalised CNN stages differ by a few percent between samples
(documentation/dino.md); unstandardised, every embedding points the same way and NT-Xent sits at ``ln(2B - 1)``.

Loss, weights 1/1/1 as upstream:

    L = w_rot CE(rot(pool f(x~)), k) + w_con NT-Xent_tau(c(view 1), c(view 2)) + w_rec sum(|f(x~) - x| C) / sum(C)

with tau = 0.5 (:func:`nnssl.losses.contrastive.nt_xent`, the two views of one crop are the positive pair, the
other 2B - 2 views negatives, gathered from every rank under DDP). The in-painting term counts the cut-out
voxels only (upstream and MONAI average L1 over the whole volume, most of which the U-Net's skips copy through;
``reconstruction_region="all"`` restores that).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from nnssl.architectures.spec import ArchitectureSpec
from nnssl.backbones import build_backbone
from nnssl.losses.contrastive import nt_xent
from nnssl.methods.base import Sample, SSLMethod, StepOutput, Transform
from nnssl.methods.heads import NORMS, make_norm
from nnssl.methods.registry import METHODS

REGIONS = ("cutout", "all")


@dataclass
class SwinUNETRConfig:
    """SwinUNETR pretext hyper-parameters (upstream defaults).

    ``rotation_plane``: the two spatial axes (0..2) of the quarter turns (their patch sides must be equal).
    ``max_drop``: each cut-out round covers ``U(0, max_drop)`` of the volume (0.3). ``max_box_fraction`` /
    ``min_box_fraction``: box sides per axis as fractions of the patch side (0.25, and at least 0.05 or 1 voxel).
    ``cross_sample``: the second round with another case's voxels. ``temperature``, ``contrast_dim``: NT-Xent and
    its head. ``head_norm``: normalisation of the pooled features before both heads (one of
    :data:`nnssl.methods.heads.NORMS`; ``batch_no_stats``: batch statistics over every rank, also in eval mode).
    ``*_weight``: the three terms. ``reconstruction_region``: ``"cutout"`` (L1 over replaced voxels) or
    ``"all"`` (upstream: L1 over every voxel). ``decoder_depth``: Eva blocks between encoder and ``PatchDecode`` on
    transformers (0: upstream's convolutional up-sampling head directly on the tokens).
    """

    rotation_plane: tuple[int, int] = (1, 2)
    max_drop: float = 0.3
    max_box_fraction: float = 0.25
    min_box_fraction: float = 0.05
    cross_sample: bool = True
    temperature: float = 0.5
    contrast_dim: int = 512
    head_norm: str = "batch_no_stats"
    rotation_weight: float = 1.0
    contrast_weight: float = 1.0
    reconstruction_weight: float = 1.0
    reconstruction_region: str = "cutout"
    decoder_depth: int = 0

    def validate(self, run: object) -> None:
        """Rotation plane with equal sides, cut-out fractions, loss settings, the patch a multiple of the unit."""
        from nnssl.config import require, require_patch_multiple

        plane = tuple(self.rotation_plane)
        require(
            len(plane) == 2 and all(a in (0, 1, 2) for a in plane) and plane[0] != plane[1],
            "method.rotation_plane",
            self.rotation_plane,
            "two different spatial axes from 0, 1, 2",
        )
        sides = [run.train.patch_size[a] for a in plane]
        require(
            sides[0] == sides[1],
            "method.rotation_plane",
            self.rotation_plane,
            f"axes whose train.patch_size sides are equal (they are {sides})",
        )
        require(0.0 <= self.max_drop < 1.0, "method.max_drop", self.max_drop, "in [0, 1)")
        require(0.0 < self.max_box_fraction <= 1.0, "method.max_box_fraction", self.max_box_fraction, "in (0, 1]")
        require(
            0.0 <= self.min_box_fraction <= self.max_box_fraction,
            "method.min_box_fraction",
            self.min_box_fraction,
            "in [0, method.max_box_fraction]",
        )
        require(self.temperature > 0, "method.temperature", self.temperature, "> 0")
        require(self.contrast_dim >= 1, "method.contrast_dim", self.contrast_dim, ">= 1")
        require(
            self.head_norm in NORMS or self.head_norm == "none", "method.head_norm", self.head_norm, f"one of {NORMS}"
        )
        for key in ("rotation_weight", "contrast_weight", "reconstruction_weight"):
            require(getattr(self, key) >= 0, f"method.{key}", getattr(self, key), ">= 0")
        require(
            self.reconstruction_region in REGIONS,
            "method.reconstruction_region",
            self.reconstruction_region,
            f"one of {REGIONS}",
        )
        require(self.decoder_depth >= 0, "method.decoder_depth", self.decoder_depth, ">= 0")
        require_patch_multiple(run, "train.patch_size", run.train.patch_size)


class RotatedViews:
    """Per sample: ``{"views": (2, C, X, Y, Z) both turned, "rotations": (2,) int64 quarter turns}``."""

    def __init__(self, plane: tuple[int, int]) -> None:
        self.axes = (int(plane[0]) + 1, int(plane[1]) + 1)  # the sample is (C, X, Y, Z)

    def __call__(self, sample: Sample) -> Sample:
        image = np.asarray(sample["image"], dtype=np.float32)
        turns = np.random.randint(4, size=2).astype(np.int64)
        views = [np.rot90(image, int(k), axes=self.axes) for k in turns]
        return {"views": np.ascontiguousarray(np.stack(views), dtype=np.float32), "rotations": turns}


def _randint(low: int, high: int) -> int:
    """An integer in [low, high] from torch's global generator."""
    return int(torch.randint(low, high + 1, (1,)))


def draw_cutout_boxes(
    shape: tuple[int, int, int], max_drop: float, max_box_fraction: float, min_box_fraction: float
) -> list[tuple[slice, slice, slice]]:
    """Boxes until their voxel counts add up to ``U(0, max_drop)`` of ``shape`` (overlaps counted twice, as the
    SwinUNETR code): start ``~ U{0..s - t}``, side ``~ U{t..m}`` clipped at the border, ``t = max(1, floor(min *
    s))``, ``m = max(t, floor(max * s))``."""
    target = float(torch.rand(())) * max_drop * float(np.prod(shape))
    low = [max(1, int(min_box_fraction * s)) for s in shape]
    high = [max(t, int(max_box_fraction * s)) for t, s in zip(low, shape)]
    boxes: list[tuple[slice, slice, slice]] = []
    covered = 0
    while covered < target:
        box = []
        for s, t, m in zip(shape, low, high):
            start = _randint(0, max(0, s - t))
            box.append(slice(start, min(s, start + _randint(t, m))))
        boxes.append(tuple(box))  # type: ignore[arg-type]
        covered += int(np.prod([b.stop - b.start for b in box]))
    return boxes


def inner_cutout(
    views: torch.Tensor, cfg: SwinUNETRConfig, groups: int = 2
) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """``(x~, C, partners)`` for ``views`` (N, C, X, Y, Z) made of ``groups`` equal sets (view 1s, view 2s).

    Round 1 per view: boxes of N(0, 1) noise (:func:`draw_cutout_boxes`). Round 2 (``cfg.cross_sample``): a view
    ``j`` drawn uniformly from the same set; when ``j`` is not the view itself, boxes with ``views[j]``'s voxels.
    ``C`` (N, 1, X, Y, Z) is 1 on every replaced voxel; ``partners[i]`` is ``j`` (``i`` when round 2 was skipped).
    ``views`` itself is not modified.
    """
    out = views.clone()
    cut = torch.zeros(views.shape[0], 1, *views.shape[2:], dtype=torch.bool, device=views.device)
    shape = tuple(int(s) for s in views.shape[2:])
    per_group = views.shape[0] // groups
    partners = []
    for i in range(views.shape[0]):
        for box in draw_cutout_boxes(shape, cfg.max_drop, cfg.max_box_fraction, cfg.min_box_fraction):
            region = (i, slice(None), *box)
            out[region] = torch.randn(out[region].shape, device=views.device, dtype=views.dtype)
            cut[(i, slice(None), *box)] = True
        j = i
        if cfg.cross_sample:
            group = i // per_group
            j = group * per_group + _randint(0, per_group - 1)
            if j != i:
                for box in draw_cutout_boxes(shape, cfg.max_drop, cfg.max_box_fraction, cfg.min_box_fraction):
                    out[(i, slice(None), *box)] = views[(j, slice(None), *box)]
                    cut[(i, slice(None), *box)] = True
        partners.append(j)
    return out, cut, partners


def masked_l1(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``sum(|prediction - target| * mask) / sum(mask)`` in fp32 (``mask`` broadcast over channels; 0 if empty)."""
    m = mask.to(torch.float32).expand_as(prediction)
    return ((prediction.float() - target.float()).abs() * m).sum() / m.sum().clamp_min(1.0)


@METHODS.register("SwinUNETR")
class SwinUNETRPretext(SSLMethod):
    """SwinUNETR's three pretext tasks; ``backbone()`` is the downstream network (ResidualEncoderUNet or Primus)."""

    config_cls = SwinUNETRConfig
    presets_module = "nnssl.presets.swin_unetr"

    def __init__(
        self, cfg: SwinUNETRConfig, arch: ArchitectureSpec, patch_size: tuple[int, int, int], in_channels: int = 1
    ) -> None:
        super().__init__(cfg, arch, patch_size, in_channels)
        a, b = cfg.rotation_plane
        if self.patch_size[a] != self.patch_size[b]:
            raise ValueError(
                f"Quarter turns in the plane of spatial axes {tuple(cfg.rotation_plane)} need equal sides there; "
                f"train.patch_size is {list(self.patch_size)}. Set method.rotation_plane or train.patch_size."
            )
        self.net = build_backbone(
            arch, in_channels, patch_size, reconstruction=True, decoder_depth=cfg.decoder_depth, mask_token=False
        )
        self.head_norm = make_norm(cfg.head_norm, self.net.feature_dim)
        self.rotation_head = nn.Linear(self.net.feature_dim, 4)
        self.contrast_head = nn.Linear(self.net.feature_dim, cfg.contrast_dim)

    def min_images_per_batch(self) -> tuple[int, str]:
        return 2, "NT-Xent contrasts the two views of each image with the views of the other images"

    def train_transform(self) -> Transform:
        return RotatedViews(self.cfg.rotation_plane)

    def val_transform(self) -> Transform:
        return RotatedViews(self.cfg.rotation_plane)

    def forward(self, batch: dict[str, torch.Tensor]) -> StepOutput:
        views, turns = batch["views"], batch["rotations"].long()
        b = views.shape[0]
        clean = torch.cat([views[:, 0], views[:, 1]])  # [view 1 of every image; view 2 of every image]
        labels = torch.cat([turns[:, 0], turns[:, 1]])
        corrupted, cut, _ = inner_cutout(clean, self.cfg)
        out = self.net.reconstruct(corrupted)
        pooled = self.head_norm(out.features.pooled())
        logits = self.rotation_head(pooled).float()
        loss_rot = nn.functional.cross_entropy(logits, labels)
        embeddings = self.contrast_head(pooled)
        loss_con, top1 = nt_xent(embeddings[:b], embeddings[b:], self.cfg.temperature)
        region = cut if self.cfg.reconstruction_region == "cutout" else torch.ones_like(cut)
        loss_rec = masked_l1(out.prediction, clean, region)
        loss = (
            self.cfg.rotation_weight * loss_rot
            + self.cfg.contrast_weight * loss_con
            + self.cfg.reconstruction_weight * loss_rec
        )
        return StepOutput(
            loss=loss,
            metrics={
                "loss_rot": float(loss_rot.detach()),
                "loss_con": float(loss_con.detach()),
                "loss_rec": float(loss_rec.detach()),
                "rotation_accuracy": float((logits.detach().argmax(1) == labels).float().mean()),
                "contrast_top1": float(top1),
                "cutout_fraction": float(cut.float().mean()),
            },
        )
