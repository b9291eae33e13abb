"""Training-free registration of a pair of images with dense features: MIND-SSC or a frozen SSL encoder's.

Gu et al. 2025, "Are Vision Foundation Models Ready for Out-of-the-Box Medical Image Registration?"
(arXiv:2507.11569) and DINO-Reg (Song et al. 2024): features of fixed and moving image -> one PCA basis for both
-> ConvexAdam (:mod:`nnssl.registration.convex_adam`). Steps of :func:`register_images`:

1. Both images are read and preprocessed as the encoder's adaptation plan says (normalisation, crop to the nonzero
   region, resampling to the plan's spacing or to ``spacing`` when given; for MIND-SSC a plan with z-scoring at
   ``spacing``, default 1.5 mm). Label maps come along (nearest label). The fixed image's preprocessed grid is the
   registration grid.
2. Optional affine pre-alignment (mutual information, :func:`nnssl.registration.geometry.affine_prealignment`).
3. Features. MIND-SSC: of the fixed image and of the moving image resampled onto the fixed grid (radius 1,
   dilation 2). Encoder: dense features of each image on its own grid (sliding window,
   :func:`nnssl.evaluation.sliding_window.sliding_window_features`; by default every map of stride <= 8,
   :func:`registration_stages`), one PCA basis fitted on both
   (:class:`nnssl.evaluation.pca.SharedPCA`, ``pca_channels`` components, default 8), upsampled trilinearly to the
   image's voxels (cell-centred), the moving map resampled onto the fixed grid, and both divided by one common
   factor so that the mean squared norm of the centred features is ``feature_scale`` (default 1: the SSD of a
   random voxel pair is then about 2, close to MIND-SSC's range, so one set of ConvexAdam weights suits both).
4. ConvexAdam -> displacement ``u`` in voxels of the fixed grid.
5. The moving image and labels are sampled at ``A_m^-1 T A_f (v + u(v))`` in one interpolation (trilinear / nearest).
6. Metrics: Dice per label before (world identity), after the affine step (when used) and after registration;
   SDlogJ and folding of ``v -> v + u(v)`` (:mod:`nnssl.registration.metrics`); seconds per step.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from nnssl.evaluation.images import PreparedImage, prepare_image, single_configuration
from nnssl.evaluation.pca import SharedPCA
from nnssl.evaluation.probes import dice_per_label, nanmean
from nnssl.evaluation.sliding_window import VolumeFeatures
from nnssl.registration.convex_adam import ConvexAdamSettings, convex_adam
from nnssl.registration.geometry import (
    affine_prealignment,
    moving_positions,
    sample_moving,
    voxel_map,
    world_displacement,
)
from nnssl.registration.metrics import deformation_quality
from nnssl.registration.mind import mind_ssc

logger = logging.getLogger(__name__)

#: Grid spacing (mm) of MIND-SSC runs when none is given.
DEFAULT_MIND_SPACING = 1.5


@dataclass
class RegistrationSettings:
    """Everything but the images: ``pca_channels`` (0 keeps every encoder channel), ``feature_scale``,
    ``affine`` pre-alignment, MIND-SSC ``mind_radius``/``mind_dilation``, and ConvexAdam's parameters."""

    pca_channels: int = 8
    feature_scale: float = 1.0
    affine: bool = False
    mind_radius: int = 1
    mind_dilation: int = 2
    convex_adam: ConvexAdamSettings = field(default_factory=ConvexAdamSettings)

    def to_dict(self) -> dict[str, Any]:
        return {
            "pca_channels": self.pca_channels,
            "feature_scale": self.feature_scale,
            "affine": self.affine,
            "mind_radius": self.mind_radius,
            "mind_dilation": self.mind_dilation,
            "convex_adam": self.convex_adam.to_dict(),
        }


@dataclass
class RegistrationResult:
    """``displacement`` (3, X, Y, Z) voxels of the fixed grid (after ``world_transform``); ``warped`` (X, Y, Z) and
    ``warped_label`` the moving image/labels on the fixed grid; ``moving_before`` the moving image on the fixed grid
    before the deformable step (after the affine one); ``metrics`` as written to metrics.json."""

    fixed: PreparedImage
    moving: PreparedImage
    displacement: torch.Tensor
    world_transform: np.ndarray
    warped: np.ndarray
    moving_before: np.ndarray
    warped_label: np.ndarray | None
    metrics: dict[str, Any]

    def world_displacement(self) -> np.ndarray:
        """(X, Y, Z, 3) the whole fixed -> moving mapping as a RAS displacement in mm (see geometry)."""
        matrix = voxel_map(self.fixed.affine, self.moving.affine, self.world_transform)
        return world_displacement(self.fixed.affine, matrix, self.moving.affine, self.displacement)


def registration_plan(spacing: float = DEFAULT_MIND_SPACING) -> dict[str, Any]:
    """A minimal adaptation plan for runs without an encoder: z-score normalisation, isotropic ``spacing`` mm."""
    return {
        "pretrain_plan": {
            "transpose_forward": [0, 1, 2],
            "configurations": {
                "registration": {
                    "spacing": [float(spacing)] * 3,
                    "normalization_schemes": ["ZScoreNormalization"],
                    "use_mask_for_norm": [False],
                }
            },
        }
    }


def plan_at_spacing(adaptation_plan: Mapping[str, Any], spacing: float | None) -> dict[str, Any]:
    """The plan itself, or a copy whose configuration resamples to isotropic ``spacing`` mm."""
    plan = copy.deepcopy(dict(adaptation_plan))
    if spacing is not None:
        name, _ = single_configuration(plan)
        plan["pretrain_plan"]["configurations"][name]["spacing"] = [float(spacing)] * 3
    return plan


def registration_stages(encoder) -> tuple[int, ...]:
    """Every encoder map of stride <= 8 (ResEnc: the four finest stages, upsampled and concatenated; Primus: its
    token grid, or the finest map when none is that fine). Fine stages carry the local detail registration needs:
    on the demo pair the four finest stages of the demo encoder gave a Dice of 0.68 against 0.63 from the stride-8
    stage alone (documentation/registration.md)."""
    chosen = tuple(i for i, stride in enumerate(encoder.strides) if stride <= 8)
    return chosen or (int(min(range(len(encoder.strides)), key=lambda i: encoder.strides[i])),)


def upsample_to_voxels(dense: torch.Tensor, stride: int, shape: tuple[int, int, int]) -> torch.Tensor:
    """(C, X, Y, Z) voxel map of a (C, ceil(X/s), ...) feature map whose cell ``i`` is centred on voxel
    ``(i + 0.5) s - 0.5`` (trilinear, ``align_corners=False``)."""
    if stride == 1:
        return dense[:, : shape[0], : shape[1], : shape[2]]
    size = tuple(int(n) * stride for n in dense.shape[1:])
    up = F.interpolate(dense[None].float(), size=size, mode="trilinear", align_corners=False)[0]
    return up[:, : shape[0], : shape[1], : shape[2]].contiguous()


def joint_feature_maps(
    fixed_features: VolumeFeatures,
    moving_features: VolumeFeatures,
    fixed: PreparedImage,
    moving: PreparedImage,
    positions: torch.Tensor,
    settings: RegistrationSettings,
) -> tuple[torch.Tensor, torch.Tensor, list[float]]:
    """Fixed and moving maps on the fixed grid in one PCA basis, commonly scaled (step 3 of the module docstring);
    also the explained variance ratios."""
    dense_f, dense_m = fixed_features.dense.float(), moving_features.dense.float()
    ratios: list[float] = []
    if settings.pca_channels:
        k = min(settings.pca_channels, int(dense_f.shape[0]))
        pca = SharedPCA.fit([dense_f, dense_m], k=k)
        dense_f, dense_m = pca.transform(dense_f), pca.transform(dense_m)
        ratios = [round(float(v), 4) for v in pca.explained_variance_ratio]
    map_f = upsample_to_voxels(dense_f, fixed_features.stride, fixed.shape)
    map_m = sample_moving(upsample_to_voxels(dense_m, moving_features.stride, moving.shape), positions)
    both = torch.cat([map_f.reshape(map_f.shape[0], -1), map_m.reshape(map_m.shape[0], -1)], dim=1)
    centred = both - both.mean(dim=1, keepdim=True)
    norm = centred.pow(2).sum(0).mean().sqrt().clamp_min(1e-12)
    factor = float(np.sqrt(settings.feature_scale)) / float(norm)
    return map_f * factor, map_m * factor, ratios


def _label_values(*labels: np.ndarray | None) -> list[int]:
    values: set[int] = set()
    for label in labels:
        if label is not None:
            values.update(int(v) for v in np.unique(label))
    values.discard(0)
    return sorted(values)


def _dice_block(prediction: np.ndarray, reference: np.ndarray, values: list[int], names: Mapping[int, str]):
    scores = dice_per_label(prediction, reference, values)
    return {names.get(v, str(v)): round(s, 4) for v, s in scores.items()}, round(nanmean(list(scores.values())), 4)


def register_prepared(
    fixed: PreparedImage,
    moving: PreparedImage,
    encoder=None,
    settings: RegistrationSettings | None = None,
    fixed_features: VolumeFeatures | None = None,
    moving_features: VolumeFeatures | None = None,
    feature_settings=None,
    label_names: Mapping[int, str] | None = None,
    device: torch.device | str = "cpu",
    world_transform: np.ndarray | None = None,
) -> RegistrationResult:
    """Register two preprocessed images (steps 2-6 of the module docstring). ``encoder`` None means MIND-SSC;
    otherwise a :class:`~nnssl.evaluation.encoder.FrozenEncoder` (features computed here unless given).
    ``world_transform``: a known pre-alignment (4x4 RAS, fixed -> moving world), used instead of computing one."""
    from nnssl.evaluation.api import FeatureSettings, features_of

    settings = settings or RegistrationSettings()
    settings.convex_adam.check()
    names = dict(label_names or {})
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    world = np.eye(4) if world_transform is None else np.asarray(world_transform, dtype=np.float64)
    if settings.affine and world_transform is None:
        world = affine_prealignment(fixed.data[0], fixed.affine, moving.data[0], moving.affine)
    seconds["affine"] = round(time.perf_counter() - started, 3)
    matrix = voxel_map(fixed.affine, moving.affine, world)
    positions = moving_positions(fixed.shape, matrix)
    moving_before = sample_moving(moving.data[:1], positions)

    tick = time.perf_counter()
    explained: list[float] = []
    if encoder is None:
        map_f = mind_ssc(torch.as_tensor(fixed.data[0]), settings.mind_radius, settings.mind_dilation)
        map_m = mind_ssc(moving_before[0], settings.mind_radius, settings.mind_dilation)
        source = f"MIND-SSC (radius {settings.mind_radius}, dilation {settings.mind_dilation})"
    else:
        fs = feature_settings or FeatureSettings()
        if fs.stages is None:
            fs = dataclasses.replace(fs, stages=registration_stages(encoder))
        fixed_features = fixed_features or features_of(encoder, fixed, fs)
        moving_features = moving_features or features_of(encoder, moving, fs)
        map_f, map_m, explained = joint_feature_maps(
            fixed_features, moving_features, fixed, moving, positions, settings
        )
        source = f"encoder {encoder.backbone.arch.name} (stages {list(fixed_features.stages)})"
    seconds["features"] = round(time.perf_counter() - tick, 3)

    tick = time.perf_counter()
    displacement = convex_adam(map_f.to(device), map_m.to(device), settings.convex_adam).cpu()
    seconds["optimisation"] = round(time.perf_counter() - tick, 3)

    final = moving_positions(fixed.shape, matrix, displacement)
    warped = sample_moving(moving.data[:1], final)[0].numpy()
    metrics: dict[str, Any] = {
        "features": source,
        "feature_channels": int(map_f.shape[0]),
        "grid": {"shape": list(fixed.shape), "spacing": [float(s) for s in fixed.properties.get("spacing", [])]},
        "settings": settings.to_dict(),
    }
    if explained:
        metrics["pca_explained_variance_ratio"] = explained
    pre_aligned = settings.affine or world_transform is not None
    if pre_aligned:
        metrics["affine_world_transform_ras"] = [[round(float(v), 6) for v in row] for row in world]
    warped_label = None
    if fixed.label is not None and moving.label is not None:
        values = _label_values(fixed.label, moving.label)
        identity_positions = (
            moving_positions(fixed.shape, voxel_map(fixed.affine, moving.affine)) if pre_aligned else positions
        )
        before = sample_moving(moving.label[None], identity_positions, mode="nearest", outside="zeros")[0]
        metrics["dice_before"], metrics["mean_dice_before"] = _dice_block(before.numpy(), fixed.label, values, names)
        if pre_aligned:
            affine_only = sample_moving(moving.label[None], positions, mode="nearest", outside="zeros")[0]
            metrics["dice_after_affine"], metrics["mean_dice_after_affine"] = _dice_block(
                affine_only.numpy(), fixed.label, values, names
            )
        warped_label = sample_moving(moving.label[None], final, mode="nearest", outside="zeros")[0].numpy()
        warped_label = warped_label.astype(np.int16)
        metrics["dice_after"], metrics["mean_dice_after"] = _dice_block(warped_label, fixed.label, values, names)
    quality = deformation_quality(displacement)
    metrics["sdlogj"] = round(quality["sdlogj"], 5)
    metrics["folding_percent"] = round(100.0 * quality["folding_fraction"], 4)
    metrics["positive_jacobian_percent"] = round(100.0 * quality["positive_jacobian_fraction"], 4)
    metrics["max_displacement_voxels"] = round(float(displacement.norm(dim=0).max()), 3)
    seconds["total"] = round(time.perf_counter() - started, 3)
    metrics["seconds"] = seconds
    return RegistrationResult(
        fixed=fixed,
        moving=moving,
        displacement=displacement,
        world_transform=world,
        warped=warped,
        moving_before=moving_before[0].numpy(),
        warped_label=warped_label,
        metrics=metrics,
    )


def register_images(
    fixed_path: str,
    moving_path: str,
    fixed_label: str | None = None,
    moving_label: str | None = None,
    encoder=None,
    settings: RegistrationSettings | None = None,
    fixed_mask: str | None = None,
    moving_mask: str | None = None,
    spacing: float | None = None,
    modality: str | None = None,
    feature_settings=None,
    label_names: Mapping[int, str] | None = None,
    device: torch.device | str = "cpu",
) -> RegistrationResult:
    """Read, preprocess (step 1) and register ``moving_path`` to ``fixed_path``; see :func:`register_prepared`.
    ``fixed_mask``/``moving_mask`` (e.g. brain masks) zero the image outside them before preprocessing."""
    tick = time.perf_counter()
    if encoder is None:
        plan = registration_plan(spacing if spacing is not None else DEFAULT_MIND_SPACING)
    else:
        plan = plan_at_spacing(encoder.adaptation_plan, spacing)
    fixed = prepare_image(fixed_path, plan, fixed_label, modality, name="fixed", mask_path=fixed_mask)
    moving = prepare_image(moving_path, plan, moving_label, modality, name="moving", mask_path=moving_mask)
    preprocessing = round(time.perf_counter() - tick, 3)
    result = register_prepared(
        fixed, moving, encoder, settings, feature_settings=feature_settings, label_names=label_names, device=device
    )
    result.metrics["fixed"] = str(fixed_path)
    result.metrics["moving"] = str(moving_path)
    result.metrics["seconds"]["preprocessing"] = preprocessing
    result.metrics["seconds"]["total"] = round(result.metrics["seconds"]["total"] + preprocessing, 3)
    return result


__all__ = [
    "DEFAULT_MIND_SPACING",
    "RegistrationResult",
    "RegistrationSettings",
    "joint_feature_maps",
    "plan_at_spacing",
    "register_images",
    "register_prepared",
    "registration_plan",
    "registration_stages",
    "upsample_to_voxels",
]
