"""The transformer family: dna's Primus (PrimusS/B/M/L, PrimusTiny) behind the backbone interface.

The network: a patch embedding ``down_projection`` (t^3 voxels per token, flattened in (w h d) order), an Eva
encoder ``eva`` (learned ``pos_embed`` + RoPE), a ``PatchDecode`` ``up_projection`` back to voxels.

* ``encode(x, mask)``: all tokens through the encoder (:func:`nnssl.architectures.primus.eva_forward_tokens`);
  inputs of another size than the build size get a resampled ``pos_embed`` and a rebuilt RoPE table (DINO's local
  crops). With ``mask`` the masked tokens are replaced by the learned ``mask_token`` right after the patch
  embedding, before the positional embedding (iBOT; :meth:`TransformerBackbone.add_mask_token` first).
* ``reconstruct(x, mask)`` (MAE, He et al. 2022): only the visible tokens enter the encoder, each with its own
  ``pos_embed`` row and RoPE position; the mask token fills the dropped positions of the full sequence; a light
  Eva decoder (``decoder_depth`` blocks, default 2 as upstream's EvaMAE) and ``up_projection`` return voxels.
  The loss mask is the same :class:`UnitMask` (tokens in (w h d) order), so prediction and mask cannot disagree
  (upstream bugs B3/B4).
* ``reconstruct(x)`` without a mask: every token through the encoder, the decoder (none with ``decoder_depth=0``:
  ``PatchDecode`` on the encoder tokens, as upstream's Models Genesis / VolumeFusion Primus trainers) and
  ``up_projection``; built with ``mask_token=False`` no mask token exists. Without a mask any input size the
  encoder accepts is allowed (``pos_embed`` resampled, RoPE rebuilt, in the light decoder too: PCRLv2's local
  crops). ``scales=True`` also returns the decoded token grid and every ``PatchDecode`` stage before the output
  layer (coarsest first).
* ``decode(features)``: the light decoder (none with ``decoder_depth=0``) and ``up_projection`` on the token grid of
  ``encode(x, mask)`` (SimMIM: every token encoded, masked ones as the mask token, ``PatchDecode`` only).
* ``encode_sparse``: refused (sparse convolution is a CNN operation; SparK is CNN-only).
* ``context_decoder(depth)``: Eva blocks over the full token sequence (AlignedMAE's feature decoder).
* frozen unless built with ``reconstruction=True``: ``up_projection``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from dynamic_network_architectures.building_blocks.eva import Eva
from torch import nn

from nnssl.architectures.primus import eva_forward_tokens, flatten_tokens, unflatten_tokens
from nnssl.architectures.spec import ArchitectureSpec
from nnssl.backbones.base import Backbone, Features, Reconstruction
from nnssl.transforms.masking import UnitMask

#: Eva parameters that sit with the patch embedding at layer 0 (layer-wise lr decay).
_EMBEDDING_PARAMS = ("network.eva.pos_embed", "network.eva.cls_token", "network.eva.reg_token")


def light_eva(dim: int, depth: int, heads: int, grid: Sequence[int]) -> Eva:
    """A Primus-style Eva (abs. pos-embed + RoPE, layer-scale 0.1, ``scale_attn_inner``) of ``depth`` blocks."""
    return Eva(
        embed_dim=dim,
        depth=depth,
        num_heads=heads,
        ref_feat_shape=tuple(grid),
        use_abs_pos_emb=True,
        use_rot_pos_emb=True,
        init_values=0.1,
        scale_attn_inner=True,
    )


class TokenContextDecoder(nn.Module):
    """``Features -> Features``: Eva blocks over every token of the grid (mask tokens see their context)."""

    def __init__(self, dim: int, depth: int, heads: int, grid: Sequence[int]) -> None:
        super().__init__()
        self.grid = tuple(int(g) for g in grid)
        self.eva = light_eva(dim, depth, heads, self.grid)

    def forward(self, features: Features) -> Features:
        out, _ = self.eva(features.tokens())
        return Features(maps=[unflatten_tokens(out, self.grid)], native_grid=self.grid)


class TransformerBackbone(Backbone):
    """Primus; see the module docstring."""

    family = "transformer"
    has_patch_tokens = True

    def __init__(
        self,
        arch: ArchitectureSpec,
        in_channels: int,
        input_size: Sequence[int],
        reconstruction: bool = False,
        decoder_depth: int = 2,
        mask_token_std: float = 1e-6,
        out_channels: int | None = None,
        mask_token: bool = True,
    ) -> None:
        super().__init__(arch, in_channels, input_size, reconstruction, out_channels)
        kernel = tuple(int(k) for k in self.network.down_projection.proj.kernel_size)
        if len(set(kernel)) != 1:
            raise ValueError(
                f"{arch.name}: the backbone interface needs cubic tokens; the patch embedding has {kernel}."
            )
        self.token_size = kernel[0]
        self.grid = tuple(s // self.token_size for s in self.input_size)
        self.num_tokens = self.grid[0] * self.grid[1] * self.grid[2]
        self.num_heads = int(self.network.eva.blocks[0].attn.num_heads)
        if reconstruction:
            if mask_token:
                self.add_mask_token(mask_token_std)
            # depth 0: PatchDecode straight on the encoder tokens (upstream's EvaMAE with decoder_eva_depth=0)
            self.decoder = (
                light_eva(self.feature_dim, decoder_depth, self.num_heads, self.grid) if decoder_depth else None
            )
        else:
            self._freeze(self.network.up_projection)

    @property
    def feature_dim(self) -> int:
        return int(self.network.embed_dim)

    @classmethod
    def unit_for(cls, arch: ArchitectureSpec, block_size: int) -> int:
        return int(arch.token_size)

    def mask_unit(self, block_size: int) -> int:
        return self.token_size

    @property
    def num_layers(self) -> int:
        """Eva depth + 1: 0 = patch embedding, ``pos_embed`` and mask token; block ``b`` (0-based) = ``b + 1``;
        final norm and decoders = depth + 1 (DINOv2's ``get_vit_lr_decay_rate``)."""
        return len(self.network.eva.blocks) + 1

    def layer_id(self, name: str) -> int:
        if name == "mask_token" or name.startswith("network.down_projection.") or name in _EMBEDDING_PARAMS:
            return 0
        prefix = "network.eva.blocks."
        if name.startswith(prefix):
            return int(name[len(prefix) :].split(".", 1)[0]) + 1
        return self.num_layers

    def add_mask_token(self, std: float, truncated: bool = False) -> nn.Parameter:
        """The learned token (1, 1, D) that stands in for masked tokens."""
        return self._new_mask_token((1, 1, self.feature_dim), std, truncated)

    def _tokens(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int]]:
        embedded = self.network.down_projection(x)
        return flatten_tokens(embedded), tuple(int(g) for g in embedded.shape[2:])  # type: ignore[return-value]

    def encode(self, x: torch.Tensor, mask: UnitMask | None = None) -> Features:
        tokens, grid = self._tokens(x)
        if mask is not None:
            if not self.has_mask_token:
                raise RuntimeError("encode(x, mask) on a transformer needs a mask token: call add_mask_token() first.")
            tokens = torch.where(mask.masked.unsqueeze(-1), self.mask_token.to(tokens.dtype), tokens)
        out = eva_forward_tokens(self.network.eva, tokens, grid=grid, build_grid=self.grid)
        return Features(maps=[unflatten_tokens(out, grid)], native_grid=grid)

    def reconstruct(self, x: torch.Tensor, mask: UnitMask | None = None, scales: bool = False) -> Reconstruction:
        self._require_reconstruction()
        tokens, grid = self._tokens(x)
        if grid != self.grid and mask is not None:
            raise ValueError(
                f"Input {tuple(x.shape[2:])} gives the token grid {grid}; this backbone was built for {self.grid}. "
                "Use the patch size the method was built with."
            )
        if mask is None:  # the whole input: every token through the encoder (off the build grid as encode does)
            full = eva_forward_tokens(self.network.eva, tokens, grid=grid, build_grid=self.grid)
        else:
            if not self.has_mask_token:
                raise RuntimeError("reconstruct(x, mask) needs the mask token: build with mask_token=True.")
            keep = mask.keep_indices()
            encoded = eva_forward_tokens(self.network.eva, tokens, keep)
            b, _, d = encoded.shape
            full = self.mask_token.to(encoded.dtype).expand(b, self.num_tokens, d)
            full = full.scatter(1, keep.unsqueeze(-1).expand(-1, -1, d), encoded)
        if self.decoder is None:
            decoded = full
        elif grid == self.grid:
            decoded = self.decoder(full)[0]
        else:
            decoded = eva_forward_tokens(self.decoder, full, grid=grid, build_grid=self.grid)
        dense = unflatten_tokens(decoded, grid)
        maps: list[torch.Tensor] = []
        if scales:  # PatchDecode stage by stage, keeping what each stage before the output layer returns
            *stages, head = self.network.up_projection.decode
            maps.append(dense)
            for stage in stages:
                maps.append(stage(maps[-1]))
            prediction = head(maps[-1])
        else:
            prediction = self.network.up_projection(dense)
        return Reconstruction(
            prediction=prediction, features=Features(maps=[unflatten_tokens(full, grid)], native_grid=grid), scales=maps
        )

    def scale_channels(self) -> tuple[int, ...]:
        *stages, _ = self.network.up_projection.decode
        return (self.feature_dim, *(int(stage[0].out_channels) for stage in stages))

    def context_decoder(self, depth: int) -> nn.Module:
        return TokenContextDecoder(self.feature_dim, depth, self.num_heads, self.grid)

    def map_shapes(self, input_size: Sequence[int] | None = None) -> list[tuple[int, tuple[int, int, int]]]:
        size = self.input_size if input_size is None else tuple(int(s) for s in input_size)
        return [(self.feature_dim, tuple(int(s) // self.token_size for s in size))]  # type: ignore[list-item]

    def decode(self, features: Features) -> torch.Tensor:
        self._require_reconstruction()
        grid = tuple(int(g) for g in features.maps[0].shape[2:])
        if grid != self.grid:
            raise ValueError(f"decode needs the token grid {self.grid} this backbone was built for; got {grid}.")
        tokens = flatten_tokens(features.maps[0])
        decoded = tokens if self.decoder is None else self.decoder(tokens)[0]
        return self.network.up_projection(unflatten_tokens(decoded, self.grid))
