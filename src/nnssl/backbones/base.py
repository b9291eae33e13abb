"""The backbone interface: what a pre-training method may ask of an architecture family (DESIGN decision 9).

A method never looks inside a network. It builds a :class:`Backbone` with :func:`nnssl.backbones.build_backbone`
(the family comes from the architecture registry) and calls:

* :meth:`Backbone.encode` -> :class:`Features`: multi-scale feature maps (ResEnc: every encoder stage; Primus: the
  token grid as a (B, D, W, H, D) map), with :meth:`Features.pooled` (global embedding: the mean of every map,
  concatenated), :meth:`Features.dense` (one map on a common grid) and :meth:`Features.tokens` (the dense map as
  (B, N, C) rows in C order of the grid);
* :meth:`Backbone.draw_mask` -> :class:`nnssl.transforms.masking.UnitMask`: masked units in the family's own unit
  (voxel blocks of the method's ``block_size`` on CNNs, whole tokens on transformers), with the exact voxel mask
  the loss must use (:meth:`UnitMask.voxels`);
* ``encode(x, mask)``: the masked input seen the family's way when every unit must stay in place: CNN: masked
  voxels zeroed (or replaced by a learned per-channel value after :meth:`Backbone.add_mask_token`); transformer:
  masked tokens replaced by a learned mask token right after the patch embedding (:meth:`add_mask_token` first);
* :meth:`Backbone.reconstruct` -> :class:`Reconstruction`: full-resolution output from the masked input for
  reconstruction methods (CNN: zeroed voxels through the U-Net; transformer: masked tokens dropped from the
  encoder, a learned mask token in their place, a light Eva decoder and the backbone's ``PatchDecode``), plus
  the features of the masked input (CNN: encoder stages; transformer: the full token grid with mask tokens);
  ``reconstruct(x)`` without a mask does the same for the whole input (restoration and dense pretext tasks:
  Models Genesis, VolumeFusion), with ``out_channels`` output channels (``build_backbone(..., out_channels=K)``);
* :meth:`Backbone.decode`: the full-resolution prediction from features that :meth:`Backbone.encode` (or
  :meth:`Backbone.encode_sparse`) returned, maps possibly changed by the method (CNN: the U-Net decoder with its
  skips; transformer: the light decoder when built with ``decoder_depth > 0``, then ``PatchDecode``): SimMIM, and
  SparK's densified stages;
* :meth:`Backbone.encode_sparse` (families with ``supports_sparse_encoding``: CNN): SparK's sparse encoding,
  every convolution and norm of the encoder sees the visible units only (masked positions zeroed after every
  convolution, norm statistics over visible positions); :attr:`Features.active` says where. Transformers raise
  (a masked token set is what ``reconstruct`` already encodes);
* :meth:`Backbone.context_decoder`: a module that lets masked units see their context before dense heads
  (transformer: Eva blocks over all tokens; CNN: the identity, its features already come from convolutions);
* :attr:`Backbone.network` (the downstream network, what ``SSLMethod.backbone()`` returns and the checkpoint
  stores as ``network_weights``), :attr:`Backbone.input_size` (what the network was built for) and
  :attr:`Backbone.feature_dim` (channels of ``pooled``/``dense``).

Parameters a method never uses are not trainable: unless reconstruction is asked for at build time, the
network's decoder (U-Net decoder / ``PatchDecode``) is frozen; the U-Net's deep-supervision heads are always
frozen (only the full-resolution head is used). The engine checks after the first step that every trainable
parameter received a gradient (DDP without ``find_unused_parameters``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from nnssl.architectures.primus import flatten_tokens
from nnssl.architectures.spec import ArchitectureSpec
from nnssl.transforms.masking import UnitMask, draw_block_mask, draw_unit_mask


@dataclass
class Features:
    """Encoder features: ``maps`` (B, C_s, *grid_s), finest first; ``native_grid`` the default dense grid.

    ``active`` (sparse encodings only, :meth:`Backbone.encode_sparse`): per map a (B, 1, *grid_s) float map, 1 where
    the encoder computed a feature from visible units, 0 at masked positions (whose features are exactly 0).
    """

    maps: list[torch.Tensor]
    native_grid: tuple[int, int, int]
    active: list[torch.Tensor] | None = None

    def pooled(self) -> torch.Tensor:
        """(B, sum C_s): the mean of every map over its grid, concatenated (1120-d on ResEnc-L, D on Primus)."""
        return torch.cat([m.mean(dim=(2, 3, 4)) for m in self.maps], dim=1)

    def dense(self, grid: Sequence[int] | int | None = None) -> torch.Tensor:
        """(B, sum C_s, *grid): every map adaptively average-pooled to ``grid`` (default the native grid), concatenated.

        Maps already on ``grid`` are used as they are; coarser maps are repeated (adaptive pooling up-samples by
        repetition).
        """
        size = self.native_grid if grid is None else ((int(grid),) * 3 if isinstance(grid, int) else tuple(grid))
        size = tuple(int(s) for s in size)
        parts = [m if tuple(m.shape[2:]) == size else F.adaptive_avg_pool3d(m, size) for m in self.maps]
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)

    def tokens(self, grid: Sequence[int] | int | None = None) -> torch.Tensor:
        """(B, N, C): :meth:`dense` as rows in C order of the grid ((w h d), dna's token order)."""
        return flatten_tokens(self.dense(grid))


@dataclass
class Reconstruction:
    """``prediction`` (B, C, X, Y, Z) from the masked input and the ``features`` of that masked input.

    ``scales`` (only with ``reconstruct(..., scales=True)``): the decoder's intermediate maps, coarsest first, the
    last one the map the output head reads (ResEnc-L: the 5 decoder stages, 320 ch at 1/16 ... 32 ch at full
    resolution; Primus: the decoded token grid and every ``PatchDecode`` stage before its output layer).
    """

    prediction: torch.Tensor
    features: Features
    scales: list[torch.Tensor] = field(default_factory=list)


class Backbone(nn.Module):
    """Base class of the family interfaces (see the module docstring); ``network`` is the downstream network."""

    family: ClassVar[str]
    #: Whether :meth:`Features.tokens` at the native grid are patch tokens the encoder computed one by one (iBOT).
    has_patch_tokens: ClassVar[bool] = False
    #: Whether pooled features vary so little between samples that heads need them standardised (DINO's CLS on
    #: instance-normalised CNN stages: ~4% between-sample spread on the demo data, documentation/dino.md).
    pooled_needs_standardization: ClassVar[bool] = False
    #: Whether :meth:`encode_sparse` exists (SparK's masked convolutions and norms: the CNN family).
    supports_sparse_encoding: ClassVar[bool] = False

    def __init__(
        self,
        arch: ArchitectureSpec,
        in_channels: int,
        input_size: Sequence[int],
        reconstruction: bool = False,
        out_channels: int | None = None,
    ) -> None:
        super().__init__()
        self.arch = arch
        self.in_channels = int(in_channels)
        self.out_channels = self.in_channels if out_channels is None else int(out_channels)
        self.input_size = tuple(int(s) for s in input_size)
        self.reconstruction = bool(reconstruction)
        self.network = arch.build(self.in_channels, self.out_channels, self.input_size)

    # ------------------------------------------------------------------ what every family provides
    @property
    def feature_dim(self) -> int:
        """Channels of :meth:`Features.pooled` and :meth:`Features.dense`."""
        raise NotImplementedError

    @property
    def has_mask_token(self) -> bool:
        return getattr(self, "mask_token", None) is not None

    @classmethod
    def unit_for(cls, arch: ArchitectureSpec, block_size: int) -> int:
        """Side of one mask unit of ``arch``: ``block_size`` on voxel-masking families, the token size on
        transformers (known without building the network, for validating settings)."""
        raise NotImplementedError

    def mask_unit(self, block_size: int) -> int:
        """Side of one mask unit of this backbone (see :meth:`unit_for`)."""
        return self.unit_for(self.arch, block_size)

    def unit_grid(self, input_size: Sequence[int], block_size: int) -> tuple[int, int, int]:
        """Mask units per axis of an input of ``input_size``."""
        unit = self.mask_unit(block_size)
        if any(int(s) % unit for s in input_size):
            raise ValueError(
                f"Input {list(input_size)} is not divisible by the mask unit {unit} of {self.arch.name}; "
                "set method.block_size to a divisor of every side (or change the patch size)."
            )
        return tuple(int(s) // unit for s in input_size)  # type: ignore[return-value]

    def draw_mask(
        self,
        batch_size: int,
        mask_ratio: float | None = None,
        block_size: int = 16,
        counts: torch.Tensor | None = None,
        input_size: Sequence[int] | None = None,
        device: torch.device | str | None = None,
        generator: torch.Generator | None = None,
        mode: str = "random",
    ) -> UnitMask:
        """Exactly ``floor(mask_ratio * n)`` (or ``counts[b]``) masked units per sample of an ``input_size`` input:
        uniformly chosen (``mode="random"``) or as random boxes (``"block"``, :func:`draw_block_mask`)."""
        size = self.input_size if input_size is None else tuple(input_size)
        drawers = {"random": draw_unit_mask, "block": draw_block_mask}
        if mode not in drawers:
            raise ValueError(f"Unknown mask mode '{mode}': use 'random' or 'block'.")
        return drawers[mode](
            batch_size,
            self.unit_grid(size, block_size),
            self.mask_unit(block_size),
            mask_ratio=mask_ratio,
            counts=counts,
            device=device,
            generator=generator,
        )

    # ------------------------------------------------------------------ layer ids (layer-wise lr decay)
    @property
    def num_layers(self) -> int:
        """Highest layer id of :meth:`layer_id`: everything above the backbone's last block (heads) sits there.

        Layer-wise lr decay (BEiT, Bao et al. 2022; DINOv2) scales the lr of a parameter of layer ``i`` by
        ``decay ** (num_layers - i)``. The default (no layers) puts every parameter at the top (scale 1).
        """
        return 0

    def layer_id(self, name: str) -> int:
        """Layer id in ``[0, num_layers]`` of parameter ``name`` (as in this module's ``named_parameters``):
        0 = input embedding (stem / patch embedding, positional embedding, mask token), ``i`` = the ``i``-th block
        or stage, ``num_layers`` = the rest (final norm, decoders)."""
        return self.num_layers

    def is_patch_embedding(self, name: str) -> bool:
        """Whether parameter ``name`` belongs to the input projection (the architecture's ``key_to_stem``:
        Primus' ``down_projection``, ResEnc's ``encoder.stem``), the target of a patch-embedding lr multiplier."""
        return name.startswith(f"network.{self.arch.key_to_stem}.")

    def add_mask_token(self, std: float, truncated: bool = False) -> nn.Parameter:
        """Create the learned mask token (normal init with ``std``, truncated at +-2 when ``truncated``)."""
        raise NotImplementedError

    def encode(self, x: torch.Tensor, mask: UnitMask | None = None) -> Features:
        """Features of ``x`` (B, C, X, Y, Z); with ``mask``, masked units are hidden in place (see module docstring)."""
        raise NotImplementedError

    def reconstruct(self, x: torch.Tensor, mask: UnitMask | None = None, scales: bool = False) -> Reconstruction:
        """Full-resolution prediction (``out_channels``) of ``x`` seen through ``mask`` (build with
        ``reconstruction=True``); without ``mask`` of the whole input (restoration and dense pretext tasks), then at
        any input size the encoder accepts. ``scales=True`` also returns the decoder's intermediate maps
        (:attr:`Reconstruction.scales`); the prediction is the same either way."""
        raise NotImplementedError

    def scale_channels(self) -> tuple[int, ...]:
        """Channels of :attr:`Reconstruction.scales` (``reconstruct(..., scales=True)``), coarsest first, known without
        running the network (heads sized per decoder scale, e.g. PCRLv2's restoration and embedding heads)."""
        raise NotImplementedError

    def map_shapes(self, input_size: Sequence[int] | None = None) -> list[tuple[int, tuple[int, int, int]]]:
        """``(channels, grid)`` of every map :meth:`encode` returns for an input of ``input_size`` (default the build
        size), finest first, known without running the network (heads sized per map, e.g. SparK's densify layers)."""
        raise NotImplementedError

    def decode(self, features: Features) -> torch.Tensor:
        """(B, ``out_channels``, X, Y, Z): the network's decoder on ``features`` (build with ``reconstruction=True``).

        ``features`` has the maps and grids :meth:`encode` returns for an input of the build size; a method may change
        their values (SparK fills masked positions), not their shapes.
        """
        raise NotImplementedError

    def encode_sparse(self, x: torch.Tensor, mask: UnitMask) -> Features:
        """SparK's sparse encoding of ``x`` seen through ``mask`` (families with :attr:`supports_sparse_encoding`).

        The encoder behaves as if only the visible units existed: masked input voxels are zeroed, every convolution's
        and pooling's output is zeroed at masked positions, every norm takes its statistics over visible positions
        only; ``Features.active`` marks the visible positions of each map. Parameter names do not change.
        """
        raise NotImplementedError(
            f"The {self.family} family has no sparse encoding: masked (sparse) convolution is a CNN operation, so "
            "SparK runs on CNN architectures only (a transformer drops masked tokens instead, see reconstruct)."
        )

    def context_decoder(self, depth: int) -> nn.Module:
        """A module ``Features -> Features`` that mixes masked units with their context before dense heads."""
        raise NotImplementedError

    # ------------------------------------------------------------------ shared helpers
    def _new_mask_token(self, shape: Sequence[int], std: float, truncated: bool) -> nn.Parameter:
        if self.has_mask_token:
            raise ValueError(f"{type(self).__name__} already has a mask token.")
        token = nn.Parameter(torch.zeros(*shape))
        if truncated:
            nn.init.trunc_normal_(token, std=std)
        else:
            nn.init.normal_(token, std=std)
        self.mask_token = token
        return token

    def _require_reconstruction(self) -> None:
        if not self.reconstruction:
            raise RuntimeError(
                f"{type(self).__name__} was built without reconstruction (its decoder is frozen); build it with "
                "build_backbone(..., reconstruction=True) to call reconstruct()."
            )

    @staticmethod
    def _freeze(module: nn.Module) -> None:
        for parameter in module.parameters():
            parameter.requires_grad_(False)
