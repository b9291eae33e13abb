"""One way to read encoder features from either backbone family (ResEnc U-Net or Primus).

:func:`encoder_features` runs only the encoder of the *downstream* network (the module whose weights are
saved as ``network_weights``), so heads trained on these features pre-train exactly the weights that
nnU-Net later loads:

* ResEnc (dna ``ResidualEncoderUNet``): ``backbone.encoder(x)`` returns the list of stage maps
  (``.stages``). ``.pooled`` = global average pool of EVERY stage, concatenated (upstream VoCo/SimCLR and
  CVA's global latent, methods.md 1.4 / 4.5): 32+64+128+256+320+320 = 1120 for ResEnc-L, 8+16+32+64 = 120
  for ResEncTiny. ``.tokens`` is None, ``.grid`` the spatial shape of the deepest stage.
* Primus (dna ``Primus``): ``backbone.down_projection`` (8^3 patch embedding) -> tokens in (w h d) order ->
  :func:`nnssl.architectures.primus.eva_forward_tokens` with all tokens (no dropping). ``.tokens`` is the
  Eva output (B, N, D) after its final norm, ``.grid`` the token grid (W, H, D) and ``.pooled`` the plain mean
  over tokens (B, D). Methods that want attention pooling (AlignedMAE) can pool ``.tokens`` themselves.
  ``.stages`` is None.

The backbone must have been built for the input size it gets here (Primus' learned positional embedding
is sized for one grid), i.e. with the method's ``network_patch_size()``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from nnssl.architectures.primus import eva_forward_tokens, flatten_tokens
from nnssl.architectures.spec import ArchitectureSpec


@dataclass
class EncoderFeatures:
    """Encoder outputs: ``pooled`` (B, D) always; ``stages`` (ResEnc) or ``tokens`` (Primus); token/stage grid."""

    pooled: torch.Tensor
    stages: list[torch.Tensor] | None
    tokens: torch.Tensor | None
    grid: tuple[int, int, int]


def is_token_backbone(arch: ArchitectureSpec) -> bool:
    """True for transformer (Primus) backbones, False for ResEnc U-Nets."""
    return bool(arch.token_masking)


def encoder_features(backbone: nn.Module, arch: ArchitectureSpec, x: torch.Tensor) -> EncoderFeatures:
    """Encoder features of ``x`` (B, C, X, Y, Z) for ``backbone`` built from ``arch`` (see the module docstring)."""
    if is_token_backbone(arch):
        embedded = backbone.down_projection(x)
        grid = tuple(int(g) for g in embedded.shape[2:])
        tokens = eva_forward_tokens(backbone.eva, flatten_tokens(embedded))
        return EncoderFeatures(pooled=tokens.mean(dim=1), stages=None, tokens=tokens, grid=grid)  # type: ignore[arg-type]
    stages = backbone.encoder(x)
    if isinstance(stages, torch.Tensor):
        stages = [stages]
    pooled = torch.cat([s.mean(dim=(2, 3, 4)) for s in stages], dim=1)
    return EncoderFeatures(pooled=pooled, stages=list(stages), tokens=None, grid=tuple(stages[-1].shape[2:]))


def pooled_dim(arch: ArchitectureSpec, backbone: nn.Module) -> int:
    """Length of ``encoder_features(...).pooled``: sum of stage widths (ResEnc) or the embedding dim (Primus)."""
    if is_token_backbone(arch):
        return (
            int(backbone.eva.pos_embed.shape[-1])
            if backbone.eva.pos_embed is not None
            else int(backbone.down_projection.proj.out_channels)
        )
    return int(sum(backbone.encoder.output_channels))
