"""GVSL: geometric visual similarity learning, registration of one case onto another plus restoration.

He et al. 2023, "Geometric Visual Similarity Learning in 3D Medical Image Self-supervised Pre-training" (CVPR);
upstream nnssl ``GVSLTrainer`` (a stub that raises there; methods.md 4.9). Formulas of the losses in
:mod:`nnssl.losses.gvsl`, warps in :mod:`nnssl.transforms.registration`.

Views. Per sample (loader): the crop ``A`` and ``A_app``, ``A`` with GVSL's appearance augmentation (local pixel
shuffling, a monotone Bezier intensity map, in-painting with noise; on the [0, 1]-rescaled copy of the z-scored
crop, mapped back). Per step (device): the moving image of pair ``i`` is the crop of sample ``i - 1`` of the same
batch (another case), and one random spatial augmentation per pair (rotation, scale, shear, translation, elastic,
:class:`~nnssl.transforms.registration.SpatialAugmentation`) is applied to ``A``, ``A_app`` and the moving ``B``.

Network (backbone interface, no family branches): ``reconstruct(x, scales=True)`` of ``A_app`` and of ``B`` gives
the encoder maps and the decoder's scales. Global features = the deepest encoder map (ResEnc: bottleneck; Primus:
token grid); local features = the finest decoder scale (ResEnc-L: 32 ch at full resolution, upstream's choice;
Primus: the last ``PatchDecode`` stage before the output layer, half resolution).

* affine head on ``concat(global_B, global_A)``: two 3x3x3 conv + GroupNorm + LeakyReLU(0.2) blocks
  (``affine_hidden``), global average pooling, four linear maps: rotation ``pi/9 clamp(., -1, 1)``, scale
  ``1 + 0.25 clamp(., -1, 1)``, shear ``pi/18 clamp(., -1, 1)``, translation (normalised coordinates);
  ``theta = [Shear Scale R_z R_y R_x | t]`` (differentiable, unlike upstream's, whose head gets no gradient);
* deformable head on ``concat(affine_warp(local_B, theta), local_A)``: the same block (``deform_hidden``) and a
  3x3x3 conv to a 3-channel displacement in voxels, trilinearly up-sampled to full resolution where the local
  features are coarser;
* ``warped = displacement_warp(affine_warp(B, theta), u)``; restoration ``recon_A`` = the backbone's prediction
  from ``A_app``.

Loss (fp32, autocast off): ``L = w_ncc (1 - mean cc(warped, A)) + w_mse mean((recon_A - A)^2) + w_smooth
L_smooth(u)``, weights 1/1/1 (upstream), NCC window 9^3. With ``registration=False`` only the restoration term
(upstream's ``GVSLTrainer_recon_only``).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from nnssl.architectures.spec import ArchitectureSpec
from nnssl.backbones import build_backbone
from nnssl.losses.gvsl import ncc_loss, smoothness_loss
from nnssl.methods.base import Sample, SSLMethod, StepOutput, Transform
from nnssl.methods.registry import METHODS
from nnssl.transforms.registration import SpatialAugmentation, affine_matrix, affine_warp, displacement_warp

logger = logging.getLogger(__name__)


@dataclass
class GVSLConfig:
    """GVSL hyper-parameters (upstream / GVSL-code defaults).

    ``ncc_window``: side of the local NCC window (9). ``*_weight``: loss weights (1/1/1). ``affine_hidden`` /
    ``deform_hidden``: channels of the two heads' conv blocks (256 / 16, multiples of 8). ``registration``: False
    trains the restoration term only (upstream's ``recon_only`` trainers; no registration heads are built).
    ``spatial_aug`` and the ranges after it: the on-device spatial augmentation (rotation and shear in degrees,
    scale factors, translation as a fraction of the half-side, elastic ``alpha`` and ``sigma`` in voxels).
    ``appearance_aug``: the appearance augmentation of ``A_app`` (``shuffle_p`` 0.8, ``nonlinear_p`` 0.9,
    in-painting with up to ``inpaint_boxes`` boxes, each further box with probability ``inpaint_continue``).
    """

    ncc_window: int = 9
    ncc_weight: float = 1.0
    mse_weight: float = 1.0
    smooth_weight: float = 1.0
    affine_hidden: int = 256
    deform_hidden: int = 16
    registration: bool = True
    spatial_aug: bool = True
    rotation_deg: float = 20.0
    scale_range: tuple[float, float] = (0.75, 1.25)
    shear_deg: float = 10.0
    translation: float = 0.1
    elastic_alpha: tuple[float, float] = (0.0, 512.0)
    elastic_sigma: tuple[float, float] = (10.0, 13.0)
    appearance_aug: bool = True
    shuffle_p: float = 0.8
    shuffle_coverage: float = 0.6
    nonlinear_p: float = 0.9
    inpaint_boxes: int = 30
    inpaint_continue: float = 0.95

    def validate(self, run: object) -> None:
        """Check ``run`` (the RunConfig) before anything starts: window, weights, head widths, ranges, batch."""
        from nnssl.config import require, require_patch_multiple

        require(self.ncc_window >= 1 and self.ncc_window % 2 == 1, "method.ncc_window", self.ncc_window, "odd, >= 1")
        for name in ("ncc_weight", "mse_weight", "smooth_weight"):
            require(getattr(self, name) >= 0, f"method.{name}", getattr(self, name), ">= 0")
        for name in ("affine_hidden", "deform_hidden"):
            value = getattr(self, name)
            require(value >= 8 and value % 8 == 0, f"method.{name}", value, "a positive multiple of 8 (GroupNorm)")
        require(0 < self.scale_range[0] <= self.scale_range[1], "method.scale_range", self.scale_range, "0 < lo <= hi")
        require(
            0 <= self.elastic_alpha[0] <= self.elastic_alpha[1],
            "method.elastic_alpha",
            self.elastic_alpha,
            "0 <= lo <= hi",
        )
        require(
            0 < self.elastic_sigma[0] <= self.elastic_sigma[1],
            "method.elastic_sigma",
            self.elastic_sigma,
            "0 < lo <= hi",
        )
        for name in ("shuffle_p", "shuffle_coverage", "nonlinear_p", "inpaint_continue"):
            value = getattr(self, name)
            require(0.0 <= value <= 1.0, f"method.{name}", value, "in [0, 1]")
        require(self.inpaint_boxes >= 0, "method.inpaint_boxes", self.inpaint_boxes, ">= 0")
        require_patch_multiple(run, "train.patch_size", run.train.patch_size)
        require(
            run.train.batch_size >= 2,
            "train.batch_size",
            run.train.batch_size,
            ">= 2 (every image is registered onto another case of its batch)",
        )


# ----------------------------------------------------------------------------------------- appearance augmentation
def to_unit(x: np.ndarray) -> tuple[np.ndarray, float, float]:
    """``(u, lo, span)`` with ``u = (x - lo) / span`` in [0, 1] (``span = 1`` for a constant crop)."""
    lo, hi = float(x.min()), float(x.max())
    span = hi - lo if hi > lo else 1.0
    return (x.astype(np.float64) - lo) / span, lo, span


def shuffle_random_blocks(u: np.ndarray, coverage: float) -> np.ndarray:
    """GVSL's local pixel shuffling, vectorised: ``coverage * volume / block`` random blocks of side
    ``max(2, dim // 20)`` (overlapping), each block's voxels permuted, read from the input and written in order
    (a later block overwrites an earlier one); every channel moves with its voxel. Returns a new array."""
    out = np.array(u, copy=True)
    shape = u.shape[1:]
    side = [min(max(2, d // 20), d) for d in shape]
    n = int(round(coverage * np.prod(shape) / np.prod(side)))
    if n == 0:
        return out
    origin = np.stack([np.random.randint(0, d - s + 1, size=n) for d, s in zip(shape, side)], axis=1)
    offsets = np.stack(np.meshgrid(*[np.arange(s) for s in side], indexing="ij"), axis=-1).reshape(-1, 3)
    index = np.ravel_multi_index(tuple((origin[:, None, :] + offsets[None]).transpose(2, 0, 1)), shape)  # (n, v)
    order = np.argsort(np.random.uniform(size=index.shape), axis=1)
    for c in range(u.shape[0]):
        values = u[c].reshape(-1)[index]
        out[c].reshape(-1)[index.reshape(-1)] = np.take_along_axis(values, order, axis=1).reshape(-1)
    return out


def increasing_bezier(u: np.ndarray, points: int = 1000) -> np.ndarray:
    """GVSL's non-linear map: the cubic Bezier curve through (0, 0), two ``U([0, 1]^2)`` control points and (1, 1),
    its x and y samples sorted (monotone increasing), applied with ``np.interp``."""
    p1, p2 = np.random.uniform(size=2), np.random.uniform(size=2)
    t = np.linspace(0.0, 1.0, points)
    w1, w2, w3 = 3 * (1 - t) ** 2 * t, 3 * (1 - t) * t**2, t**3
    xs = np.sort(w1 * p1[0] + w2 * p2[0] + w3)
    ys = np.sort(w1 * p1[1] + w2 * p2[1] + w3)
    return np.interp(u, xs, ys)


def paint_noise_boxes(u: np.ndarray, max_boxes: int, p_continue: float) -> np.ndarray:
    """GVSL's in-painting: while fewer than ``max_boxes`` and ``U(0, 1) < p_continue``, a box of sides
    ``U{dim//10 .. dim//5 - 1}`` at least 3 voxels from the border is filled with U(0, 1) noise. A new array."""
    out = np.array(u, copy=True)
    shape = u.shape[1:]
    for _ in range(max_boxes):
        if np.random.uniform() >= p_continue:
            break
        box = []
        for d in shape:
            side = int(np.random.randint(max(1, d // 10), max(2, d // 5)))
            low, high = min(3, d - side), max(min(3, d - side), d - side - 3)
            start = int(np.random.randint(low, high + 1))
            box.append(slice(start, start + side))
        out[(slice(None), *box)] = np.random.uniform(size=tuple(s.stop - s.start for s in box))
    return out


class GVSLAppearance:
    """Per sample: ``{"image": A, "image_app": A_app}`` (two separate float32 arrays; ``A`` is never modified)."""

    def __init__(self, cfg: GVSLConfig, augment: bool) -> None:
        self.cfg = cfg
        self.augment = augment and cfg.appearance_aug

    def appearance(self, image: np.ndarray) -> np.ndarray:
        """``A_app`` from ``A`` (C, X, Y, Z): the three augmentations on the [0, 1] copy, mapped back."""
        u, lo, span = to_unit(image)
        if np.random.uniform() < self.cfg.shuffle_p:
            u = shuffle_random_blocks(u, self.cfg.shuffle_coverage)
        if np.random.uniform() < self.cfg.nonlinear_p:
            u = increasing_bezier(u)
        u = paint_noise_boxes(u, self.cfg.inpaint_boxes, self.cfg.inpaint_continue)
        return (u * span + lo).astype(np.float32)

    def __call__(self, sample: Sample) -> Sample:
        image = np.array(sample["image"], dtype=np.float32, copy=True)
        app = self.appearance(image) if self.augment else image.copy()
        return {"image": image, "image_app": app}


# ----------------------------------------------------------------------------------------- heads
class ConvBlock(nn.Sequential):
    """Two (3x3x3 conv, GroupNorm(C/8 groups), LeakyReLU 0.2) layers (the GVSL code's ``DoubleConv``)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        layers: list[nn.Module] = []
        for c_in in (in_channels, out_channels):
            layers += [
                nn.Conv3d(c_in, out_channels, 3, padding=1),
                nn.GroupNorm(out_channels // 8, out_channels),
                nn.LeakyReLU(0.2),
            ]
        super().__init__(*layers)


class AffineHead(nn.Module):
    """``(global_moving, global_fixed) -> theta`` (B, 3, 4), see the module docstring."""

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.block = ConvBlock(2 * channels, hidden)
        self.rotation = nn.Linear(hidden, 3)
        self.scale = nn.Linear(hidden, 3)
        self.translation = nn.Linear(hidden, 3)
        self.shear = nn.Linear(hidden, 6)
        for layer in (self.rotation, self.scale, self.translation, self.shear):  # start near the identity
            nn.init.normal_(layer.weight, std=1e-3)
            nn.init.zeros_(layer.bias)

    def forward(self, moving: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        code = self.block(torch.cat([moving, fixed], dim=1)).mean(dim=(2, 3, 4)).float()
        rotation = self.rotation(code).clamp(-1, 1) * (math.pi / 9)
        scale = self.scale(code).clamp(-1, 1) * 0.25 + 1.0
        shear = self.shear(code).clamp(-1, 1) * (math.pi / 18)
        return affine_matrix(rotation, scale, shear, self.translation(code))


class DeformableHead(nn.Module):
    """``(local_moving, local_fixed) -> u`` (B, 3, *grid) displacement in voxels (flow conv init N(0, 1e-5))."""

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.block = ConvBlock(2 * channels, hidden)
        self.flow = nn.Conv3d(hidden, 3, 3, padding=1)
        nn.init.normal_(self.flow.weight, std=1e-5)
        nn.init.zeros_(self.flow.bias)

    def forward(self, moving: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        return self.flow(self.block(torch.cat([moving, fixed], dim=1)))


@METHODS.register("GVSL")
class GVSL(SSLMethod):
    """GVSL on any backbone family; ``backbone()`` is the downstream network."""

    config_cls = GVSLConfig
    presets_module = "nnssl.presets.gvsl"

    def __init__(
        self, cfg: GVSLConfig, arch: ArchitectureSpec, patch_size: tuple[int, int, int], in_channels: int = 1
    ) -> None:
        super().__init__(cfg, arch, patch_size, in_channels)
        if cfg.ncc_window < 1 or cfg.ncc_window % 2 == 0:
            raise ValueError(f"method.ncc_window must be odd and >= 1, got {cfg.ncc_window}.")
        self.net = build_backbone(arch, in_channels, patch_size, reconstruction=True, mask_token=False)
        self.augmentation = SpatialAugmentation(
            cfg.rotation_deg, tuple(cfg.scale_range), cfg.shear_deg, cfg.translation, tuple(cfg.elastic_alpha),
            tuple(cfg.elastic_sigma),
        )  # fmt: skip
        if cfg.registration:
            global_channels = self.net.map_shapes()[-1][0]
            local_channels = self.net.scale_channels()[-1]
            self.affine_head = AffineHead(global_channels, cfg.affine_hidden)
            self.deformable_head = DeformableHead(local_channels, cfg.deform_hidden)

    def min_images_per_batch(self) -> tuple[int, str]:
        return 2, "every image is registered onto another case of its batch"

    def train_transform(self) -> Transform:
        return GVSLAppearance(self.cfg, augment=True)

    def val_transform(self) -> Transform:
        return GVSLAppearance(self.cfg, augment=True)  # upstream validates with the training views

    def register(self, fixed_rec, moving_rec, moving: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(warped moving, displacement u at full resolution, theta)`` from the two reconstructions' features."""
        theta = self.affine_head(moving_rec.features.maps[-1], fixed_rec.features.maps[-1])
        local_fixed, local_moving = fixed_rec.scales[-1], moving_rec.scales[-1]
        flow = self.deformable_head(affine_warp(local_moving, theta), local_fixed)
        if tuple(flow.shape[2:]) != tuple(moving.shape[2:]):
            flow = F.interpolate(flow, size=moving.shape[2:], mode="trilinear", align_corners=False)
        warped = displacement_warp(affine_warp(moving, theta), flow)
        return warped, flow, theta

    def forward(self, batch: dict[str, torch.Tensor]) -> StepOutput:
        fixed, fixed_app = batch["image"], batch["image_app"]
        if fixed.shape[0] < 2:
            raise ValueError(
                "GVSL registers every image onto another case of the same batch; this process got a batch of "
                f"{fixed.shape[0]}. Use a per-process batch of at least 2 (train.batch_size >= 2 x GPUs)."
            )
        moving = fixed.roll(1, dims=0)  # pair i: the crop of sample i - 1, another case
        if self.cfg.spatial_aug:
            theta, displacement = self.augmentation.draw(fixed.shape[0], tuple(fixed.shape[2:]), fixed.device)
            fixed, fixed_app, moving = (
                self.augmentation.apply(v, theta, displacement) for v in (fixed, fixed_app, moving)
            )
        fixed_rec = self.net.reconstruct(fixed_app, scales=self.cfg.registration)
        with torch.autocast(device_type=fixed.device.type, enabled=False):
            mse = (fixed_rec.prediction.float() - fixed.float()).pow(2).mean()
        metrics = {"mse": float(mse.detach())}
        loss = self.cfg.mse_weight * mse
        if self.cfg.registration:
            moving_rec = self.net.reconstruct(moving, scales=True)
            warped, flow, theta = self.register(fixed_rec, moving_rec, moving)
            ncc = ncc_loss(fixed, warped, self.cfg.ncc_window)
            smooth = smoothness_loss(flow)
            loss = loss + self.cfg.ncc_weight * ncc + self.cfg.smooth_weight * smooth
            metrics.update(
                ncc=float(ncc.detach()),
                smooth=float(smooth.detach()),
                ncc_unregistered=float(ncc_loss(fixed, moving, self.cfg.ncc_window).detach()),
                flow_abs=float(flow.detach().abs().mean()),
            )
        return StepOutput(loss=loss, metrics=metrics)
