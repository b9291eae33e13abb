"""Primus MAE: token-dropping masked autoencoder around dna's Primus (He et al. 2022; Wald et al. 2025).

The encoder is the downstream network itself (``self.backbone``, a dna ``Primus``): its ``down_projection``
embeds 8^3 patches into tokens flattened in dna's (w h d) order, its ``eva`` encoder runs on the *kept* tokens
only, each with its own learned ``eva.pos_embed`` row and RoPE position
(:func:`nnssl.architectures.primus.eva_forward_tokens`). The MAE-only parts live beside it: a learned
``mask_token`` (initialised with std 1e-6, methods.md 4.1) scattered into the dropped positions of the full
(w h d) sequence, and a light decoder (an ``Eva`` of ``decoder_depth`` blocks, default 2 as upstream's EvaMAE)
over that full sequence, after which the backbone's ``up_projection`` (``PatchDecode``) returns voxels.

The voxel loss mask is built from the very ``keep_indices`` the encoder used, unflattened in the same (w h d)
order (:func:`nnssl.architectures.primus.token_mask_to_voxel_mask`). Upstream flattened tokens as (h w d) and
rebuilt the mask as (w h d) (bugs B3/B4), scoring visible patches and transposing the transferred positional
embedding; neither can happen here because one pair of helpers does all flattening.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from dynamic_network_architectures.architectures.primus import Primus
from dynamic_network_architectures.building_blocks.eva import Eva
from torch import nn

from nnssl.architectures.primus import (
    eva_forward_tokens,
    flatten_tokens,
    keep_indices_to_token_mask,
    token_mask_to_voxel_mask,
    unflatten_tokens,
)


class PrimusMAENetwork(nn.Module):
    """Backbone (dna Primus) + mask token + light Eva decoder; ``forward(x, keep_indices)`` -> reconstruction."""

    def __init__(
        self, backbone: Primus, patch_size: Sequence[int], decoder_depth: int = 2, mask_token_std: float = 1e-6
    ) -> None:
        super().__init__()
        self.backbone = backbone
        embed = backbone.down_projection.proj
        self.token_size = tuple(int(k) for k in embed.kernel_size)
        if len(set(self.token_size)) != 1:
            raise ValueError(f"Primus MAE needs cubic tokens; the patch embedding has kernel {self.token_size}.")
        self.grid = tuple(int(p) // t for p, t in zip(patch_size, self.token_size))
        self.num_tokens = self.grid[0] * self.grid[1] * self.grid[2]
        dim = int(backbone.embed_dim)
        heads = int(backbone.eva.blocks[0].attn.num_heads)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        nn.init.normal_(self.mask_token, std=mask_token_std)
        self.decoder = Eva(
            embed_dim=dim,
            depth=decoder_depth,
            num_heads=heads,
            ref_feat_shape=self.grid,
            use_abs_pos_emb=True,
            use_rot_pos_emb=True,
            init_values=0.1,
            scale_attn_inner=True,
        )

    def encode(self, x: torch.Tensor, keep_indices: torch.Tensor) -> torch.Tensor:
        """(B, K, D) encoder output for the kept tokens, row k = token ``keep_indices[:, k]`` in (w h d) order."""
        tokens = flatten_tokens(self.backbone.down_projection(x))
        if tokens.shape[1] != self.num_tokens:
            raise ValueError(
                f"Input {tuple(x.shape[2:])} gives {tokens.shape[1]} tokens; this MAE was built for the grid "
                f"{self.grid}. Use the patch size the method was built with."
            )
        return eva_forward_tokens(self.backbone.eva, tokens, keep_indices)

    def fill_mask_tokens(self, encoded: torch.Tensor, keep_indices: torch.Tensor) -> torch.Tensor:
        """Full (B, N, D) sequence: encoded tokens at ``keep_indices``, the mask token everywhere else."""
        b, _, d = encoded.shape
        full = self.mask_token.to(encoded.dtype).expand(b, self.num_tokens, d)
        return full.scatter(1, keep_indices.unsqueeze(-1).expand(-1, -1, d), encoded)

    def forward(self, x: torch.Tensor, keep_indices: torch.Tensor) -> torch.Tensor:
        """Reconstruction (B, C_out, X, Y, Z) of ``x`` (B, C, X, Y, Z) seen only through ``keep_indices``."""
        full = self.fill_mask_tokens(self.encode(x, keep_indices), keep_indices)
        decoded, _ = self.decoder(full)
        return self.backbone.up_projection(unflatten_tokens(decoded, self.grid))

    def masked_voxels(self, keep_indices: torch.Tensor) -> torch.Tensor:
        """(B, 1, X, Y, Z) float, 1 on the voxels of tokens NOT in ``keep_indices`` (the loss mask)."""
        dropped = ~keep_indices_to_token_mask(keep_indices, self.num_tokens)
        return token_mask_to_voxel_mask(dropped.to(torch.float32), self.grid, self.token_size[0])
