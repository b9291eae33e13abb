"""SimMIM: masked image modelling with a learned mask token and a minimal decoder, on any backbone family.

Xie et al. 2022, "SimMIM: A Simple Framework for Masked Image Modeling"; 3D on Primus-M as upstream nnssl's
``SimMIMEvaTrainer`` (``EvaSimMIM``, OpenMind benchmark, Wald et al. 2025).

Per sample exactly ``floor(r * n)`` mask units are hidden (:meth:`nnssl.backbones.Backbone.draw_mask`, the same draw
as MAE: ``block_size``^3 cubes on CNNs, whole tokens on transformers) and every unit stays in place
(:meth:`~nnssl.backbones.Backbone.encode` with a mask): on a CNN the masked voxels take a learned per-channel value
``t`` at the input, ``x * (1 - M) + t M``, and the U-Net decoder reconstructs; on a transformer every token is
encoded, the masked ones replaced by a learned token right after the patch embedding, and the backbone's
``PatchDecode`` alone maps the tokens back to voxels (no transformer decoder:
:meth:`~nnssl.backbones.Backbone.decode` with ``decoder_depth=0``).

Loss (SimMIM's L1 on the masked part): ``L = sum(|xhat - x| * M) / sum(M)``, ``M = 1`` on masked voxels (the mask's
own :meth:`~nnssl.transforms.masking.UnitMask.voxels`), fp32, z-scored intensities. ``loss="mse"`` gives upstream's
masked MSE (``SimMIMEvaTrainer`` inherits ``BaseMAETrainer``'s loss).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from nnssl.architectures.spec import ArchitectureSpec
from nnssl.backbones import build_backbone
from nnssl.losses.reconstruction import masked_mse
from nnssl.losses.simmim import masked_l1
from nnssl.methods.base import SSLMethod, StepOutput
from nnssl.methods.registry import METHODS

LOSSES = {"l1": masked_l1, "mse": masked_mse}


@dataclass
class SimMIMConfig:
    """SimMIM hyper-parameters.

    ``mask_ratio`` 0.75 and tokens as mask units on transformers (upstream ``SimMIMEvaTrainer``: blocks of the ViT
    patch, 8^3); ``block_size`` is the side of the masked cubes on CNNs (16, as MAE's; upstream has no CNN SimMIM).
    ``mask_token_std`` initialises the learned mask token (normal, 1e-6 as upstream's ``EvaSimMIM``). ``loss``: ``l1``
    (SimMIM) or ``mse`` (upstream's masked MSE).
    """

    mask_ratio: float = 0.75
    block_size: int = 16
    mask_token_std: float = 1e-6
    loss: str = "l1"

    def validate(self, run: object) -> None:
        """Ratio in (0, 1), a known loss, patch and mask units that fit the backbone."""
        from nnssl.config import require, require_mask_units, require_patch_multiple

        require(0.0 < self.mask_ratio < 1.0, "method.mask_ratio", self.mask_ratio, "in (0, 1)")
        require(self.block_size >= 1, "method.block_size", self.block_size, ">= 1")
        require(self.mask_token_std >= 0, "method.mask_token_std", self.mask_token_std, ">= 0")
        require(self.loss in LOSSES, "method.loss", self.loss, f"one of {', '.join(LOSSES)}")
        require_patch_multiple(run, "train.patch_size", run.train.patch_size)
        require_mask_units(run, "method.block_size", self.block_size, run.train.patch_size)


@METHODS.register("SimMIM")
class SimMIM(SSLMethod):
    """SimMIM; ``backbone()`` is the downstream network (ResidualEncoderUNet or dna Primus)."""

    config_cls = SimMIMConfig
    presets_module = "nnssl.presets.simmim"

    def __init__(
        self, cfg: SimMIMConfig, arch: ArchitectureSpec, patch_size: tuple[int, int, int], in_channels: int = 1
    ) -> None:
        super().__init__(cfg, arch, patch_size, in_channels)
        if cfg.loss not in LOSSES:
            raise ValueError(f"method.loss must be one of {', '.join(LOSSES)}; got {cfg.loss!r}.")
        self.net = build_backbone(
            arch, in_channels, patch_size, reconstruction=True, decoder_depth=0, mask_token_std=cfg.mask_token_std
        )
        if not self.net.has_mask_token:  # transformers make theirs when built for reconstruction
            self.net.add_mask_token(cfg.mask_token_std)
        self.net.unit_grid(self.patch_size, cfg.block_size)  # the mask units must tile the patch

    def forward(self, batch: dict[str, torch.Tensor]) -> StepOutput:
        x = batch["image"]
        mask = self.net.draw_mask(x.shape[0], self.cfg.mask_ratio, self.cfg.block_size, device=x.device)
        prediction = self.net.decode(self.net.encode(x, mask))
        voxels = mask.voxels()
        loss = LOSSES[self.cfg.loss](prediction, x, voxels)
        return StepOutput(loss=loss, metrics={"masked_fraction": float(voxels.mean().detach())})
