"""MAE: masked autoencoding for 3D volumes, on ResEnc (voxel blocks) and Primus (token dropping).

He et al. 2022, "Masked Autoencoders Are Scalable Vision Learners"; nnssl's 3D variants from Wald et al. 2025,
"An OpenMind for 3D medical vision self-supervised learning" (upstream ``BaseMAETrainer`` and
``BaseEvaMAETrainer``).

* CNN (``token_masking=False``, e.g. ResEncL): per sample exactly ``floor(r * n_blocks)`` cubes of
  ``block_size``^3 voxels are zeroed (methods.md 0.3); the full U-Net (out_channels = in_channels)
  reconstructs the input.
* Transformer (``token_masking=True``, e.g. PrimusM): per sample exactly ``n_keep = N - floor(r * N)`` tokens
  enter the encoder; a light decoder sees them plus a learned mask token at the dropped positions
  (:class:`nnssl.methods.primus_mae_network.PrimusMAENetwork`).

Loss (both): ``L = sum((xhat - x)^2 * M) / sum(M)`` with ``M = 1`` on masked voxels, in fp32 on the z-scored
intensities (:func:`nnssl.losses.reconstruction.masked_mse`). Masks are drawn with torch's generator on the
batch's device.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from nnssl.architectures import check_patch_size
from nnssl.architectures.spec import ArchitectureSpec
from nnssl.losses.reconstruction import masked_mse
from nnssl.methods.base import SSLMethod, StepOutput
from nnssl.methods.primus_mae_network import PrimusMAENetwork
from nnssl.methods.registry import METHODS
from nnssl.transforms.masking import blocky_mask, random_keep_indices


@dataclass
class MAEConfig:
    """MAE hyper-parameters (upstream defaults).

    ``block_size`` is the side of the masked voxel cubes for CNNs (16); token-masking architectures mask whole
    tokens (8^3 for Primus) and ignore it. ``decoder_depth`` is the number of Eva blocks of the Primus MAE
    decoder (2). ``mask_token_std`` initialises the Primus mask token. With ``ignore_anonymized`` the loss
    also skips voxels whose anonymization mask is 1 (removed by defacing) when the batch carries that mask.
    """

    mask_ratio: float = 0.75
    block_size: int = 16
    decoder_depth: int = 2
    mask_token_std: float = 1e-6
    ignore_anonymized: bool = False

    def validate(self, run: object) -> None:
        """Check ``run`` (the RunConfig) before anything starts: ratio in (0, 1), patch and mask blocks fit."""
        from nnssl.config import architecture_of, require, require_patch_multiple

        require(0.0 < self.mask_ratio < 1.0, "method.mask_ratio", self.mask_ratio, "in (0, 1)")
        require(self.block_size >= 1, "method.block_size", self.block_size, ">= 1")
        require(self.decoder_depth >= 1, "method.decoder_depth", self.decoder_depth, ">= 1")
        require(self.mask_token_std >= 0, "method.mask_token_std", self.mask_token_std, ">= 0")
        require_patch_multiple(run, "train.patch_size", run.train.patch_size)
        if not architecture_of(run).token_masking:
            require(
                all(p % self.block_size == 0 for p in run.train.patch_size),
                "method.block_size",
                self.block_size,
                f"a divisor of every side of train.patch_size={tuple(run.train.patch_size)}",
            )


@METHODS.register("MAE")
class MAE(SSLMethod):
    """Masked autoencoder; ``backbone()`` is the downstream network (ResidualEncoderUNet or dna Primus)."""

    config_cls = MAEConfig

    def __init__(
        self, cfg: MAEConfig, arch: ArchitectureSpec, patch_size: tuple[int, int, int], in_channels: int = 1
    ) -> None:
        super().__init__(cfg, arch, patch_size, in_channels)
        sizes = check_patch_size(arch, patch_size)
        network = arch.build(in_channels, in_channels, sizes)
        self.token_masking = bool(arch.token_masking)
        if self.token_masking:
            self.network: nn.Module = PrimusMAENetwork(network, sizes, cfg.decoder_depth, cfg.mask_token_std)
        else:
            if any(p % cfg.block_size for p in sizes):
                raise ValueError(
                    f"MAE block_size {cfg.block_size} must divide the patch size {list(sizes)}; "
                    "set method.block_size (16 for 160^3) or train.patch_size."
                )
            self.network = network

    def backbone(self) -> nn.Module:
        return self.network.backbone if self.token_masking else self.network

    def forward(self, batch: dict[str, torch.Tensor]) -> StepOutput:
        x = batch["image"]
        if self.token_masking:
            keep = random_keep_indices(x.shape[0], self.network.num_tokens, self.cfg.mask_ratio, device=x.device)
            prediction = self.network(x, keep)
            mask = self.network.masked_voxels(keep)
        else:
            mask = blocky_mask(x.shape[0], x.shape[2:], self.cfg.block_size, self.cfg.mask_ratio, device=x.device)
            prediction = self.network(x * (1.0 - mask).to(x.dtype))
            if isinstance(prediction, (list, tuple)):
                prediction = prediction[0]
        if self.cfg.ignore_anonymized and "anonymization_mask" in batch:
            mask = mask * (1.0 - batch["anonymization_mask"].to(torch.float32))
        loss = masked_mse(prediction, x, mask)
        return StepOutput(loss=loss, metrics={"masked_fraction": float(mask.mean().detach())})
