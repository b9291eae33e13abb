"""PCRLv2: multi-scale pixel restoration and global/local feature comparison on any backbone family.

Zhou et al. 2023, "A Unified Visual Information Preservation Framework for Self-supervised Pre-training in Medical
Image Analysis" (TPAMI); upstream nnssl ``PCRLv2Trainer`` (file ``PCLRv2_Trainer.py``; it raises "Missing adaptation
plan"), methods.md 4.10. Views in :mod:`nnssl.transforms.pcrlv2`, losses in :mod:`nnssl.losses.pcrlv2`.

Per image: two global views A, B (boxes of 96^3 ... 160^3 from the 180^3 patch with IoU >= 0.3, resized to
``global_size`` 128^3) and ``num_locals`` local views (32^3 ... 64^3 inside the union of A and B, resized to
``local_size`` 64^3); the restoration target is A after its spatial transform and before its intensity augmentation.

Network (backbone interface): ``reconstruct(x, scales=True)`` (the U-Net with its skips on ResEnc, the Eva decoder
and ``PatchDecode`` on Primus) gives the full-resolution prediction and the decoder's scales; the "mid" scales are
every scale but the finest (ResEnc-L: 320, 256, 128, 64 channels at 1/16 ... 1/2, upstream's four mid-stages;
Primus: the decoded token grid and the first ``PatchDecode`` stage). Per mid scale ``s``: a restoration head (3x3x3
conv to the input channels, trilinear up-sampling to the view size), ``z = BN(GAP(f_s))`` and a predictor ``p =
MLP(C -> 2C -> C, BN, ReLU)`` (upstream; BatchNorms global over processes).

Loss (weights 1): ``L = MSE(pred(A_aug), A) + mean_s MSE(restore_s(A_aug), A) + L_global + L_local`` with the
symmetric stop-gradient cosine terms of :func:`~nnssl.losses.pcrlv2.pcrlv2_similarity_losses`. Targets come from
the same network with a stop-gradient, as in the PCRLv2 code (its momentum-update helper is never called): no
momentum encoder.

Views of another size than the network's input: the backbone is built for ``global_size``
(:meth:`network_patch_size`); local views enter at ``local_size``. The ResEnc U-Net takes any multiple of 32
(ResEnc-L); Primus' whole-input reconstruction runs the local views at their own token grid (8^3 for 64^3) with the
learned positional embedding resampled and RoPE rebuilt (in the encoder and the light decoder), as DINO's local crops
do, so they are neither up-sampled to 128^3 (4x the compute of the 6 locals) nor padded.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from nnssl.architectures.spec import ArchitectureSpec
from nnssl.backbones import build_backbone
from nnssl.losses.pcrlv2 import pcrlv2_similarity_losses
from nnssl.methods.base import SSLMethod, StepOutput, Transform
from nnssl.methods.heads import GlobalBatchNorm1d
from nnssl.methods.registry import METHODS
from nnssl.transforms.intensity import IntensityAugmentation
from nnssl.transforms.pcrlv2 import PCRLv2Views, feasible_pairs, parse_size

UPSTREAM_GLOBAL_CROPS = ("96x96x96", "128x128x96", "128x128x128", "160x160x128", "160x160x160")
UPSTREAM_LOCAL_CROPS = ("32x32x32", "64x64x32", "64x64x64")


@dataclass
class PCRLv2Config:
    """PCRLv2 hyper-parameters (upstream defaults).

    ``global_crop_sizes`` / ``local_crop_sizes``: box sizes drawn per view (``"XxYxZ"``); ``global_size`` /
    ``local_size``: the views' sizes after resizing (the backbone is built for ``global_size``). ``min_iou``: least
    IoU of the two global boxes. ``rotation_deg`` / ``scale_range`` / ``mirror``: spatial augmentation of every
    view; ``noise_std`` / ``blur_sigma`` / ``gamma_range``: its intensity augmentation (each applied with p 1).
    ``decoder_depth``: Eva blocks of the transformer's light decoder. ``*_weight``: loss weights (1).
    """

    global_crop_sizes: tuple[str, ...] = UPSTREAM_GLOBAL_CROPS
    global_size: tuple[int, int, int] = (128, 128, 128)
    local_crop_sizes: tuple[str, ...] = UPSTREAM_LOCAL_CROPS
    local_size: tuple[int, int, int] = (64, 64, 64)
    num_locals: int = 6
    min_iou: float = 0.3
    rotation_deg: float = 10.0
    scale_range: tuple[float, float] = (0.9, 1.1)
    mirror: bool = True
    noise_std: tuple[float, float] = (0.0, 0.25)
    blur_sigma: tuple[float, float] = (0.0, 2.0)
    gamma_range: tuple[float, float] = (0.75, 1.35)
    augment: bool = True
    decoder_depth: int = 2
    rec_weight: float = 1.0
    mid_weight: float = 1.0
    global_weight: float = 1.0
    local_weight: float = 1.0

    def validate(self, run: object) -> None:
        """Check ``run`` (the RunConfig): sizes parse, fit the patch, the backbone accepts the views, IoU reachable."""
        from nnssl.config import architecture_of, require, require_fits, require_patch_multiple

        for key in ("global_crop_sizes", "local_crop_sizes"):
            values = getattr(self, key)
            try:
                sizes = [parse_size(v) for v in values]
            except ValueError as err:
                require(False, f"method.{key}", values, f"sizes like '128x128x96' ({err})")
            require(bool(sizes), f"method.{key}", values, "at least one size")
            for size in sizes:
                require_fits(f"method.{key}", size, run)
        require(0.0 < self.min_iou <= 1.0, "method.min_iou", self.min_iou, "in (0, 1]")
        require(
            bool(feasible_pairs([parse_size(v) for v in self.global_crop_sizes], self.min_iou)),
            "method.global_crop_sizes",
            self.global_crop_sizes,
            f"at least one pair of sizes that can reach IoU {self.min_iou}",
        )
        smallest_global = [min(parse_size(v)[a] for v in self.global_crop_sizes) for a in range(3)]
        largest_local = [max(parse_size(v)[a] for v in self.local_crop_sizes) for a in range(3)]
        require(
            all(lo <= g for lo, g in zip(largest_local, smallest_global)),
            "method.local_crop_sizes",
            self.local_crop_sizes,
            f"no larger than the smallest global crop {tuple(smallest_global)} on any axis (locals lie inside the "
            "union of the two global boxes)",
        )
        require_patch_multiple(run, "method.global_size", self.global_size)
        require_patch_multiple(run, "method.local_size", self.local_size)
        multiple = architecture_of(run).patch_multiple
        for key in ("global_size", "local_size"):
            require(
                all(int(s) >= 2 * multiple for s in getattr(self, key)),
                f"method.{key}",
                getattr(self, key),
                f"at least {2 * multiple} per side on {run.architecture} (2 units at the deepest level: instance "
                "norms and the token grid need more than one position)",
            )
        require(self.num_locals >= 1, "method.num_locals", self.num_locals, ">= 1")
        require(self.decoder_depth >= 0, "method.decoder_depth", self.decoder_depth, ">= 0")
        require(0 < self.scale_range[0] <= self.scale_range[1], "method.scale_range", self.scale_range, "0 < lo <= hi")
        for key in ("rec_weight", "mid_weight", "global_weight", "local_weight"):
            require(getattr(self, key) >= 0, f"method.{key}", getattr(self, key), ">= 0")


class ScaleHeads(nn.Module):
    """One mid scale's heads: restoration conv, ``z = BN(GAP(f))``, predictor ``C -> 2C -> C``."""

    def __init__(self, channels: int, out_channels: int) -> None:
        super().__init__()
        self.restore = nn.Conv3d(channels, out_channels, 3, padding=1)
        self.norm = GlobalBatchNorm1d(channels)
        self.predictor = nn.Sequential(
            nn.Linear(channels, 2 * channels),
            GlobalBatchNorm1d(2 * channels),
            nn.ReLU(inplace=True),
            nn.Linear(2 * channels, channels),
        )

    def embed(self, scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(z, p)`` of a (N, C, *grid) scale."""
        z = self.norm(scale.mean(dim=(2, 3, 4)))
        return z, self.predictor(z)


@METHODS.register("PCRLv2")
class PCRLv2(SSLMethod):
    """PCRLv2; ``backbone()`` is the downstream network built for ``global_size``."""

    config_cls = PCRLv2Config
    presets_module = "nnssl.presets.pcrlv2"

    def __init__(
        self, cfg: PCRLv2Config, arch: ArchitectureSpec, patch_size: tuple[int, int, int], in_channels: int = 1
    ) -> None:
        super().__init__(cfg, arch, patch_size, in_channels)
        self.global_size = tuple(int(s) for s in cfg.global_size)
        self.local_size = tuple(int(s) for s in cfg.local_size)
        self.global_crop_sizes = [parse_size(s) for s in cfg.global_crop_sizes]
        self.local_crop_sizes = [parse_size(s) for s in cfg.local_crop_sizes]
        for size in (*self.global_crop_sizes, *self.local_crop_sizes):
            if any(c > p for c, p in zip(size, self.patch_size)):
                raise ValueError(
                    f"PCRLv2 crop {list(size)} does not fit into train.patch_size {list(self.patch_size)}; enlarge "
                    "train.patch_size or shrink method.global_crop_sizes / method.local_crop_sizes."
                )
        self.net = build_backbone(
            arch, in_channels, self.global_size, reconstruction=True, decoder_depth=cfg.decoder_depth, mask_token=False
        )
        mids = self.net.scale_channels()[:-1]
        if not mids:
            raise ValueError(f"{arch.name}'s decoder has a single scale; PCRLv2 needs at least two.")
        self.heads = nn.ModuleList(ScaleHeads(c, in_channels) for c in mids)

    def network_patch_size(self) -> tuple[int, ...]:
        return self.global_size

    def min_images_per_batch(self) -> tuple[int, str]:
        return 2, "the embedding heads normalise with batch statistics (BatchNorm1d) over the images"

    def views(self, augment: bool) -> PCRLv2Views:
        cfg = self.cfg
        intensity = IntensityAugmentation(
            p_noise=1.0,
            p_rician_given_noise=0.0,
            noise_std=tuple(cfg.noise_std),
            p_blur=1.0,
            blur_sigma=tuple(cfg.blur_sigma),
            p_brightness=0.0,
            p_contrast=0.0,
            p_low_resolution=0.0,
            p_gamma_inverted=0.0,
            p_gamma=1.0,
            gamma_range=tuple(cfg.gamma_range),
        )
        return PCRLv2Views(
            self.global_crop_sizes,
            self.global_size,
            self.local_crop_sizes,
            self.local_size,
            cfg.num_locals,
            cfg.min_iou,
            cfg.rotation_deg if augment else 0.0,
            tuple(cfg.scale_range) if augment else (1.0, 1.0),
            cfg.mirror and augment,
            intensity if augment else IntensityAugmentation.none(),
        )

    def train_transform(self) -> Transform:
        return self.views(self.cfg.augment)

    def val_transform(self) -> Transform:
        return self.views(self.cfg.augment)  # upstream validates with the training views

    def _embeddings(self, scales: list[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [head.embed(scale) for head, scale in zip(self.heads, scales)]

    def forward(self, batch: dict[str, torch.Tensor]) -> StepOutput:
        views, clean, local_views = batch["global_views"], batch["global_clean"], batch["local_views"]
        b, n_local = local_views.shape[:2]
        rec_a = self.net.reconstruct(views[:, 0], scales=True)
        rec_b = self.net.reconstruct(views[:, 1], scales=True)
        rec_l = self.net.reconstruct(local_views.flatten(0, 1), scales=True)
        emb_a, emb_b = self._embeddings(rec_a.scales), self._embeddings(rec_b.scales)
        emb_l = [(z.view(b, n_local, -1), p.view(b, n_local, -1)) for z, p in self._embeddings(rec_l.scales)]
        with torch.autocast(device_type=clean.device.type, enabled=False):
            target = clean.float()
            rec = F.mse_loss(rec_a.prediction.float(), target)
            mid_terms = []
            for head, scale in zip(self.heads, rec_a.scales):
                restored = F.interpolate(head.restore(scale).float(), size=target.shape[2:], mode="trilinear")
                mid_terms.append(F.mse_loss(restored, target))
            mid = torch.stack(mid_terms).mean()
        global_sim, local_sim = pcrlv2_similarity_losses(emb_a, emb_b, emb_l)
        cfg = self.cfg
        loss = (
            cfg.rec_weight * rec + cfg.mid_weight * mid + cfg.global_weight * global_sim + cfg.local_weight * local_sim
        )
        metrics = {
            "rec": float(rec.detach()),
            "mid_rec": float(mid.detach()),
            "global_sim": float(global_sim.detach()),
            "local_sim": float(local_sim.detach()),
        }
        return StepOutput(loss=loss, metrics=metrics)
