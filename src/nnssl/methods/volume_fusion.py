"""VolumeFusion: segment the fusion coefficients of two volumes mixed through random boxes, on any backbone family.

Wang et al. 2023, "MIS-FM: 3D Medical Image Segmentation using Foundation Models Pretrained on a Large-Scale
Unannotated Dataset" (arXiv 2306.16925); the 3D benchmark recipe of Wald et al. 2025, "An OpenMind for 3D medical
vision self-supervised learning" (upstream ``VolumeFusionTrainer`` on ResEnc-L, ``VolumeFusionEvaTrainer`` on
Primus-M; methods.md 4.6).

Per sample (transform, loader workers): the crop gets upstream's intensity augmentation, and a class map ``y`` is
drawn: ``M ~ U{min_boxes..max_boxes}`` (10..39) boxes, each side ``~ U{min_box_side..floor(max_box_fraction s)}``
(8..0.625 s) at a uniform position, each with a class ``k ~ U{0..K-1}``; later boxes overwrite earlier ones,
voxels outside every box are class 0. In ``forward`` each image ``I_f`` of the batch is fused with the next one
``I_b`` (the last with the first; a batch of one image with its own mirror image) voxel by voxel:

    X = alpha I_f + (1 - alpha) I_b,        alpha = y / (K - 1)  in {0, .25, .5, .75, 1} for K = 5.

Network: the backbone's whole-input reconstruction with K output channels (ResEnc U-Net; Primus: encoder tokens
straight into ``PatchDecode``, upstream's ``decoder_eva_depth=0``) predicts ``y``.

Loss: soft Dice (per sample, every class, smooth 1e-5) + cross-entropy, weights 1 and 1
(:func:`nnssl.losses.volume_fusion.dice_ce_loss`).

Departures from upstream: both crops are the loader's random crops (upstream trains on centre crops only), and
the network sees ``train.batch_size`` fused images made from ``train.batch_size`` loaded ones (each image is the
foreground of one pair and the background of the next) where upstream loads twice as many images.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from nnssl.architectures.spec import ArchitectureSpec
from nnssl.backbones import build_backbone
from nnssl.losses.volume_fusion import dice_ce_loss
from nnssl.methods.base import Sample, SSLMethod, StepOutput, Transform
from nnssl.methods.registry import METHODS
from nnssl.transforms.intensity import IntensityAugmentation

Box = tuple[slice, slice, slice]


@dataclass
class VolumeFusionConfig:
    """VolumeFusion hyper-parameters (upstream defaults).

    ``num_classes``: K fusion classes, ``alpha_k = k / (K - 1)``. ``min_boxes``/``max_boxes``: the box count range
    (inclusive). ``min_box_side``/``max_box_fraction``: box sides in voxels, ``[min_box_side, floor(fraction * s)]``
    per axis. ``augment``: upstream's intensity augmentation per image (noise, blur, brightness, contrast, low
    resolution, two gammas) before fusion. ``dice_weight``/``ce_weight``/``dice_smooth``: the loss.
    ``decoder_depth``: Eva blocks between encoder and ``PatchDecode`` on transformers (0 as upstream).
    """

    num_classes: int = 5
    min_boxes: int = 10
    max_boxes: int = 39
    min_box_side: int = 8
    max_box_fraction: float = 0.625
    augment: bool = True
    dice_weight: float = 1.0
    ce_weight: float = 1.0
    dice_smooth: float = 1e-5
    decoder_depth: int = 0

    def validate(self, run: object) -> None:
        """Class and box counts, box sides that fit the patch, weights, the patch a multiple of the unit."""
        from nnssl.config import require, require_patch_multiple

        require(self.num_classes >= 2, "method.num_classes", self.num_classes, ">= 2")
        require(self.min_boxes >= 0, "method.min_boxes", self.min_boxes, ">= 0")
        require(self.max_boxes >= self.min_boxes, "method.max_boxes", self.max_boxes, f">= {self.min_boxes}")
        require(self.min_box_side >= 1, "method.min_box_side", self.min_box_side, ">= 1")
        require(0.0 < self.max_box_fraction <= 1.0, "method.max_box_fraction", self.max_box_fraction, "in (0, 1]")
        smallest = min(int(self.max_box_fraction * s) for s in run.train.patch_size)
        require(
            smallest >= self.min_box_side,
            "method.min_box_side",
            self.min_box_side,
            f"<= floor(method.max_box_fraction * smallest side of train.patch_size) = {smallest}",
        )
        for key in ("dice_weight", "ce_weight", "dice_smooth"):
            require(getattr(self, key) >= 0, f"method.{key}", getattr(self, key), ">= 0")
        require(self.decoder_depth >= 0, "method.decoder_depth", self.decoder_depth, ">= 0")
        require_patch_multiple(run, "train.patch_size", run.train.patch_size)


def draw_fusion_labels(shape: tuple[int, int, int], cfg: VolumeFusionConfig) -> tuple[np.ndarray, list[Box], list[int]]:
    """``(y, boxes, classes)``: the (1, *shape) int8 class map, its boxes and their classes, in drawing order."""
    labels = np.zeros((1, *shape), dtype=np.int8)
    count = int(np.random.randint(cfg.min_boxes, cfg.max_boxes + 1))
    boxes: list[Box] = []
    classes: list[int] = []
    for _ in range(count):
        box = []
        for s in shape:
            high = max(1, min(s, int(cfg.max_box_fraction * s)))
            side = int(np.random.randint(min(cfg.min_box_side, high), high + 1))
            start = int(np.random.randint(0, s - side + 1))
            box.append(slice(start, start + side))
        k = int(np.random.randint(cfg.num_classes))
        labels[(slice(None), *box)] = k
        boxes.append(tuple(box))  # type: ignore[arg-type]
        classes.append(k)
    return labels, boxes, classes


def fuse(foreground: torch.Tensor, background: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``alpha * foreground + (1 - alpha) * background`` with ``alpha = labels / (num_classes - 1)`` per voxel."""
    alpha = labels.to(foreground.dtype) / (num_classes - 1)
    return alpha * foreground + (1 - alpha) * background


class FusionLabels:
    """Per sample: ``{"image": augmented crop, "fusion_labels": (1, X, Y, Z) int8 class map}``."""

    def __init__(self, cfg: VolumeFusionConfig, augment: bool) -> None:
        self.cfg = cfg
        # upstream's VolumeFusion list: Gaussian noise only, low resolution with p 0.25
        self.intensity = (
            IntensityAugmentation(p_rician_given_noise=0.0, p_low_resolution=0.25)
            if augment
            else IntensityAugmentation.none()
        )

    def __call__(self, sample: Sample) -> Sample:
        image = self.intensity(np.asarray(sample["image"], dtype=np.float32))
        labels, _, _ = draw_fusion_labels(image.shape[1:], self.cfg)
        return {"image": image, "fusion_labels": labels}


@METHODS.register("VolumeFusion")
class VolumeFusion(SSLMethod):
    """VolumeFusion; ``backbone()`` is the downstream network (its output head has ``num_classes`` channels)."""

    config_cls = VolumeFusionConfig
    presets_module = "nnssl.presets.volume_fusion"

    def __init__(
        self, cfg: VolumeFusionConfig, arch: ArchitectureSpec, patch_size: tuple[int, int, int], in_channels: int = 1
    ) -> None:
        super().__init__(cfg, arch, patch_size, in_channels)
        if cfg.num_classes < 2:
            raise ValueError(f"method.num_classes must be at least 2, got {cfg.num_classes}.")
        self.net = build_backbone(
            arch,
            in_channels,
            patch_size,
            reconstruction=True,
            decoder_depth=cfg.decoder_depth,
            out_channels=cfg.num_classes,
            mask_token=False,
        )

    def train_transform(self) -> Transform:
        return FusionLabels(self.cfg, augment=self.cfg.augment)

    def val_transform(self) -> Transform:
        return FusionLabels(self.cfg, augment=False)

    def fused_input(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(X, y)``: each image fused with the next of the batch (alone: with its mirror image) and the classes."""
        image = batch["image"]
        labels = batch["fusion_labels"].long()
        background = torch.roll(image, -1, dims=0) if image.shape[0] > 1 else image.flip(2, 3, 4)
        return fuse(image, background, labels, self.cfg.num_classes), labels[:, 0]

    def forward(self, batch: dict[str, torch.Tensor]) -> StepOutput:
        fused, labels = self.fused_input(batch)
        logits = self.net.reconstruct(fused).prediction
        loss, dice, ce = dice_ce_loss(
            logits, labels, self.cfg.dice_smooth, dice_weight=self.cfg.dice_weight, ce_weight=self.cfg.ce_weight
        )
        accuracy = (logits.detach().argmax(dim=1) == labels).float().mean()
        return StepOutput(
            loss=loss,
            metrics={"dice_loss": float(dice.detach()), "ce": float(ce.detach()), "accuracy": float(accuracy)},
        )
