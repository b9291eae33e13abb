"""The CNN family: dna's ResidualEncoderUNet (ResEnc-L, ResEncTiny) behind the backbone interface.

* ``encode(x, mask)``: masked voxel blocks are zeroed, ``x * (1 - M)`` (MAE, methods.md 0.3), or set to the
  learned per-channel mask token ``t`` after :meth:`CNNBackbone.add_mask_token`, ``x * (1 - M) + t M`` (SimMIM);
  the encoder returns one map per stage (finest first).
* ``reconstruct(x, mask)``: the U-Net on the zeroed input; the full-resolution head only (no deep supervision);
  ``scales=True`` also returns every decoder stage's output (coarsest first).
* ``decode(features)``: the U-Net decoder on the given stage maps (skips included), full-resolution head only.
* ``encode_sparse(x, mask)`` (SparK): the input zeroed at masked voxels and the encoder run inside
  :meth:`CNNBackbone.sparse`, the masked-forward context of :mod:`nnssl.backbones.sparse` (hooks, no renamed
  modules): every conv/pooling output zeroed at masked positions, instance norms over visible positions only.
* native dense grid: the first stage whose total stride reaches 8 (the grid of an 8^3-token transformer on the
  same input), the deepest stage when none does.
* frozen: the deep-supervision heads ``decoder.seg_layers[:-1]`` always; the whole decoder (``stages``,
  ``transpconvs``, ``seg_layers``) unless built with ``reconstruction=True``. dna's decoder holds a second
  reference to the encoder, which stays trainable.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from nnssl.architectures.spec import ArchitectureSpec
from nnssl.backbones.base import Backbone, Features, Reconstruction
from nnssl.backbones.sparse import SparseEncoding
from nnssl.transforms.masking import UnitMask

#: Total stride of the stage used as the native dense grid (that of Primus with its default 8^3 tokens).
DENSE_STRIDE = 8


class IdentityContext(nn.Module):
    """CNN context decoder: convolutional features already see their neighbourhood, so they pass unchanged."""

    def forward(self, features: Features) -> Features:
        return features


class CNNBackbone(Backbone):
    """ResEnc U-Nets; see the module docstring."""

    family = "cnn"
    pooled_needs_standardization = True
    supports_sparse_encoding = True

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
        decoder = self.network.decoder
        for head in list(decoder.seg_layers)[:-1]:
            self._freeze(head)
        if not reconstruction:
            for part in (decoder.stages, decoder.transpconvs, decoder.seg_layers):
                self._freeze(part)
        strides = self.network.encoder.strides
        total, self._dense_stage = 1, len(strides) - 1
        for index, stride in enumerate(strides):
            total *= int(stride[0] if isinstance(stride, (list, tuple)) else stride)
            if total >= DENSE_STRIDE:
                self._dense_stage = index
                break

    @property
    def feature_dim(self) -> int:
        return int(sum(self.network.encoder.output_channels))

    @classmethod
    def unit_for(cls, arch: ArchitectureSpec, block_size: int) -> int:
        return int(block_size)

    @property
    def num_layers(self) -> int:
        """Encoder stages + 1: 0 = stem and mask token, stage ``s`` (0-based) = ``s + 1``, decoder = stages + 1."""
        return len(self.network.encoder.stages) + 1

    def layer_id(self, name: str) -> int:
        if name == "mask_token" or name.startswith("network.encoder.stem."):
            return 0
        prefix = "network.encoder.stages."
        if name.startswith(prefix):
            return int(name[len(prefix) :].split(".", 1)[0]) + 1
        return self.num_layers

    def add_mask_token(self, std: float, truncated: bool = False) -> nn.Parameter:
        """A learned value per input channel, shape (1, C, 1, 1, 1), that replaces masked voxels."""
        return self._new_mask_token((1, self.in_channels, 1, 1, 1), std, truncated)

    def _masked_input(self, x: torch.Tensor, mask: UnitMask | None) -> torch.Tensor:
        if mask is None:
            return x
        voxels = mask.voxels()
        hidden = x * (1.0 - voxels).to(x.dtype)
        if self.has_mask_token:
            hidden = hidden + voxels.to(x.dtype) * self.mask_token.to(x.dtype)
        return hidden

    def _features(self, stages) -> Features:
        maps = [stages] if isinstance(stages, torch.Tensor) else list(stages)
        grid = tuple(int(g) for g in maps[min(self._dense_stage, len(maps) - 1)].shape[2:])
        return Features(maps=maps, native_grid=grid)  # type: ignore[arg-type]

    def encode(self, x: torch.Tensor, mask: UnitMask | None = None) -> Features:
        return self._features(self.network.encoder(self._masked_input(x, mask)))

    def reconstruct(self, x: torch.Tensor, mask: UnitMask | None = None, scales: bool = False) -> Reconstruction:
        self._require_reconstruction()
        stages = self.network.encoder(self._masked_input(x, mask))
        if scales:
            prediction, maps = self._decode_with_scales(stages)
            return Reconstruction(prediction=prediction, features=self._features(stages), scales=maps)
        prediction = self.network.decoder(stages)
        if isinstance(prediction, (list, tuple)):
            prediction = prediction[0]
        return Reconstruction(prediction=prediction, features=self._features(stages))

    def _decode_with_scales(self, stages: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """dna's ``UNetDecoder.forward`` (skips, full-resolution head only), keeping every decoder stage's output."""
        decoder = self.network.decoder
        lower, maps = stages[-1], []
        for s in range(len(decoder.stages)):
            up = decoder.transpconvs[s](lower)
            lower = decoder.stages[s](torch.cat((up, stages[-(s + 2)]), 1))
            maps.append(lower)
        return decoder.seg_layers[-1](lower), maps

    def scale_channels(self) -> tuple[int, ...]:
        return tuple(int(c) for c in self.network.encoder.output_channels[-2::-1])

    def context_decoder(self, depth: int) -> nn.Module:
        return IdentityContext()

    def map_shapes(self, input_size: Sequence[int] | None = None) -> list[tuple[int, tuple[int, int, int]]]:
        size = self.input_size if input_size is None else tuple(int(s) for s in input_size)
        shapes, total = [], 1
        for channels, stride in zip(self.network.encoder.output_channels, self.network.encoder.strides):
            total *= int(stride[0] if isinstance(stride, (list, tuple)) else stride)
            shapes.append((int(channels), tuple(int(s) // total for s in size)))
        return shapes  # type: ignore[return-value]

    def decode(self, features: Features) -> torch.Tensor:
        self._require_reconstruction()
        prediction = self.network.decoder(features.maps)
        return prediction[0] if isinstance(prediction, (list, tuple)) else prediction

    def sparse(self, mask: UnitMask) -> SparseEncoding:
        """The masked-forward context of the encoder (:class:`nnssl.backbones.sparse.SparseEncoding`)."""
        return SparseEncoding(self.network.encoder, mask)

    def encode_sparse(self, x: torch.Tensor, mask: UnitMask) -> Features:
        hidden = x * (1.0 - mask.voxels()).to(x.dtype)
        with self.sparse(mask) as context:
            features = self._features(self.network.encoder(hidden))
        features.active = [
            a if a is not None else m.new_ones((m.shape[0], 1, *m.shape[2:]))
            for m, a in ((m, context.active(m.shape[2:])) for m in features.maps)
        ]
        return features
