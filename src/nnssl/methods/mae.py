"""MAE: masked autoencoding for 3D volumes on any backbone family.

He et al. 2022, "Masked Autoencoders Are Scalable Vision Learners"; nnssl's 3D variants from Wald et al. 2025,
"An OpenMind for 3D medical vision self-supervised learning" (upstream ``BaseMAETrainer`` on ResEnc-L and
``BaseEvaMAETrainer`` on Primus-M).

Per sample exactly ``floor(r * n)`` mask units are hidden (:meth:`nnssl.backbones.Backbone.draw_mask`: cubes of
``block_size``^3 voxels on CNNs, zeroed, methods.md 0.3; whole tokens on transformers, dropped from the encoder and
replaced by a learned mask token before a light decoder) and the backbone reconstructs the full input
(:meth:`~nnssl.backbones.Backbone.reconstruct`).

Loss: ``L = sum((xhat - x)^2 * M) / sum(M)`` with ``M = 1`` on masked voxels (the mask's own
:meth:`~nnssl.transforms.masking.UnitMask.voxels`), in fp32 on the z-scored intensities
(:func:`nnssl.losses.reconstruction.masked_mse`); with ``norm_pix_loss`` the target is every mask unit standardised
on its own (:func:`~nnssl.losses.reconstruction.per_unit_normalized`, MAE's normalised pixels). Masks are drawn with
torch's generator on the batch's device. With ``decay_norms_and_biases=False`` biases, norms, layer-scales, the
positional embedding and the mask token get no weight decay (MAE/DINOv2 practice; upstream decays them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from nnssl.architectures.spec import ArchitectureSpec
from nnssl.backbones import build_backbone
from nnssl.losses.reconstruction import masked_mse, per_unit_normalized
from nnssl.methods.base import SSLMethod, StepOutput
from nnssl.methods.registry import METHODS


@dataclass
class MAEConfig:
    """MAE hyper-parameters (upstream defaults).

    ``block_size`` is the side of the masked voxel cubes for voxel-masking backbones (16); transformers mask whole
    tokens (8^3 for Primus) and ignore it. ``decoder_depth`` is the number of Eva blocks of the transformer's light
    decoder (2). ``mask_token_std`` initialises the transformer's mask token. With ``ignore_anonymized`` the loss
    also skips voxels whose anonymization mask is 1 (removed by defacing) when the batch carries that mask.
    ``norm_pix_loss``: reconstruct every mask unit standardised on its own (MAE sec. 4.1; off as upstream).
    ``decay_norms_and_biases``: weight-decay every parameter (True, upstream) or weights only (False).
    """

    mask_ratio: float = 0.75
    block_size: int = 16
    decoder_depth: int = 2
    mask_token_std: float = 1e-6
    ignore_anonymized: bool = False
    norm_pix_loss: bool = False
    decay_norms_and_biases: bool = True

    def validate(self, run: object) -> None:
        """Check ``run`` (the RunConfig) before anything starts: ratio in (0, 1), patch and mask blocks fit."""
        from nnssl.config import require, require_mask_units, require_patch_multiple

        require(0.0 < self.mask_ratio < 1.0, "method.mask_ratio", self.mask_ratio, "in (0, 1)")
        require(self.block_size >= 1, "method.block_size", self.block_size, ">= 1")
        require(self.decoder_depth >= 1, "method.decoder_depth", self.decoder_depth, ">= 1")
        require(self.mask_token_std >= 0, "method.mask_token_std", self.mask_token_std, ">= 0")
        require_patch_multiple(run, "train.patch_size", run.train.patch_size)
        require_mask_units(run, "method.block_size", self.block_size, run.train.patch_size)


@METHODS.register("MAE")
class MAE(SSLMethod):
    """Masked autoencoder; ``backbone()`` is the downstream network (ResidualEncoderUNet or dna Primus)."""

    config_cls = MAEConfig
    presets_module = "nnssl.presets.mae"
    batch_masks = ("anonymization_mask",)  # read by forward when cfg.ignore_anonymized

    def __init__(
        self, cfg: MAEConfig, arch: ArchitectureSpec, patch_size: tuple[int, int, int], in_channels: int = 1
    ) -> None:
        super().__init__(cfg, arch, patch_size, in_channels)
        self.net = build_backbone(
            arch,
            in_channels,
            patch_size,
            reconstruction=True,
            decoder_depth=cfg.decoder_depth,
            mask_token_std=cfg.mask_token_std,
        )
        self.net.unit_grid(self.patch_size, cfg.block_size)  # the mask units must tile the patch

    def param_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        if self.cfg.decay_norms_and_biases:
            return super().param_groups(weight_decay)
        return self.decay_split_groups(weight_decay)

    def forward(self, batch: dict[str, torch.Tensor]) -> StepOutput:
        x = batch["image"]
        mask = self.net.draw_mask(x.shape[0], self.cfg.mask_ratio, self.cfg.block_size, device=x.device)
        prediction = self.net.reconstruct(x, mask).prediction
        voxels = mask.voxels()
        if self.cfg.ignore_anonymized and "anonymization_mask" in batch:
            voxels = voxels * (1.0 - batch["anonymization_mask"].to(torch.float32))
        target = per_unit_normalized(x, mask.unit_size) if self.cfg.norm_pix_loss else x
        loss = masked_mse(prediction, target, voxels)
        return StepOutput(loss=loss, metrics={"masked_fraction": float(voxels.mean().detach())})
