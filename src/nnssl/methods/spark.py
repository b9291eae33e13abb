"""SparK 3D: sparse masked modelling for CNN encoders (CNN family only).

Tian et al. 2023, "Designing BERT for Convolutional Networks: Sparse and Hierarchical Masked Modeling"; the 3D
ResEnc-L version of upstream nnssl (``SparkMAETrainer``, ``EffSparkMAETrainer``, ``BaseVariableSparkMAETrainer``;
Wald et al. 2025, OpenMind benchmark).

1. Mask: exactly ``floor(r * n)`` cubes of ``block_size``^3 voxels per sample, drawn as MAE's
   (:meth:`nnssl.backbones.Backbone.draw_mask`); with ``mask_ratio_range = (lo, hi)`` (VariableSpark) the ratio is
   drawn per step, ``r ~ U(lo, hi)``.
2. Sparse encoding (:meth:`~nnssl.backbones.Backbone.encode_sparse`): masked input voxels zeroed, every convolution
   and pooling output zeroed at masked positions, instance norms with statistics over visible positions only; stages
   coarser than the cubes are dense (upstream's rule). Parameter names stay those of the downstream ResEnc.
3. Densify, per stage ``s`` with visible map ``A_s`` and learned mask token ``m_s`` (stages that can hold masked
   positions only):

   * ``densify="full"`` (SparK3D): ``h_s = P_s(A_s * IN_A(f_s) + (1 - A_s) * m_s)`` with ``IN_A`` a parameter-free
     instance norm over visible positions and ``P_s`` a 3x3x3 convolution (the identity on the finest stage);
   * ``densify="token"`` (EffSpark): ``h_s = f_s + (1 - A_s) * m_s``.

4. The U-Net decoder on ``h`` (:meth:`~nnssl.backbones.Backbone.decode`) reconstructs the input; loss
   ``L = sum((xhat - x)^2 * M) / sum(M)`` on masked voxels (``M = 1 - A_0`` at full resolution), fp32.

The mask is an argument of every call (no module-global state); ``backbone()`` is the plain ResidualEncoderUNet, so
the checkpoint's ``network_weights`` load strictly into nnU-Net's network; the densify layers are method state.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from nnssl.architectures.spec import ArchitectureSpec
from nnssl.backbones import Features, build_backbone
from nnssl.backbones.sparse import masked_instance_norm, unit_repeat
from nnssl.losses.reconstruction import masked_mse
from nnssl.methods.base import SSLMethod, StepOutput
from nnssl.methods.registry import METHODS

DENSIFY_MODES = ("full", "token")


@dataclass
class SparKConfig:
    """SparK hyper-parameters (upstream defaults).

    ``mask_ratio`` 0.75 of ``block_size`` = 16 cubes; ``mask_ratio_range`` (``None``, or ``(lo, hi)`` with
    0 < lo <= hi < 1: VariableSpark's per-step ratio ``U(0.6, 0.9)``) replaces ``mask_ratio`` when set. ``densify``:
    ``full`` (SparK3D: sparse norm, mask token, 3x3x3 projection) or ``token`` (EffSpark: mask token only).
    ``mask_token_std``: the per-stage mask tokens are drawn from a normal with this std truncated at +-std
    (upstream: 0.02).
    """

    mask_ratio: float = 0.75
    mask_ratio_range: tuple[float, float] | None = None
    block_size: int = 16
    densify: str = "full"
    mask_token_std: float = 0.02

    def validate(self, run: object) -> None:
        """A CNN architecture (sparse convolution), ratios in (0, 1), cubes that tile the patch and the stages."""
        from nnssl.backbones import family_of
        from nnssl.config import architecture_of, require, require_mask_units, require_patch_multiple

        family = family_of(architecture_of(run))
        require(
            family.supports_sparse_encoding,
            "architecture",
            run.architecture,
            f"a CNN architecture such as ResEncL or ResEncTiny: SparK needs sparse (masked) convolutions, which the "
            f"{family.family} family has not (SparK is a CNN-only method; for Primus use MAE or SimMIM)",
        )
        require(0.0 < self.mask_ratio < 1.0, "method.mask_ratio", self.mask_ratio, "in (0, 1)")
        if self.mask_ratio_range is not None:
            lo, hi = (tuple(self.mask_ratio_range) + (None, None))[:2]
            require(
                len(self.mask_ratio_range) == 2 and lo is not None and 0.0 < lo <= hi < 1.0,
                "method.mask_ratio_range",
                self.mask_ratio_range,
                "none or two ratios lo, hi with 0 < lo <= hi < 1",
            )
        require(
            self.block_size >= 1 and self.block_size & (self.block_size - 1) == 0,
            "method.block_size",
            self.block_size,
            "a power of two (the cubes must tile every stage of the encoder, whose strides are powers of two)",
        )
        require(self.densify in DENSIFY_MODES, "method.densify", self.densify, f"one of {', '.join(DENSIFY_MODES)}")
        require(self.mask_token_std >= 0, "method.mask_token_std", self.mask_token_std, ">= 0")
        require_patch_multiple(run, "train.patch_size", run.train.patch_size)
        require_mask_units(run, "method.block_size", self.block_size, run.train.patch_size)


class Densify(nn.Module):
    """SparK's densify step for one stage: fill masked positions with a learned token before the decoder."""

    def __init__(self, channels: int, maskable: bool, mode: str, project: bool, token_std: float) -> None:
        super().__init__()
        self.mode = mode
        self.mask_token = None
        if maskable:
            self.mask_token = nn.Parameter(torch.zeros(1, channels, 1, 1, 1))
            nn.init.trunc_normal_(self.mask_token, std=token_std, a=-token_std, b=token_std)
        self.norm = nn.InstanceNorm3d(channels) if mode == "full" else None  # no parameters, as upstream
        self.proj = nn.Conv3d(channels, channels, 3, padding=1) if mode == "full" and project else nn.Identity()

    def forward(self, feature: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
        a = active.to(feature.dtype)
        if self.norm is not None:
            feature = masked_instance_norm(feature, active, self.norm)
        if self.mask_token is not None:
            feature = feature * a + (1.0 - a) * self.mask_token.to(feature.dtype)
        return self.proj(feature)


@METHODS.register("SparK")
class SparK(SSLMethod):
    """SparK on CNN backbones; ``backbone()`` is the downstream ResidualEncoderUNet."""

    config_cls = SparKConfig
    presets_module = "nnssl.presets.spark"

    def __init__(
        self, cfg: SparKConfig, arch: ArchitectureSpec, patch_size: tuple[int, int, int], in_channels: int = 1
    ) -> None:
        super().__init__(cfg, arch, patch_size, in_channels)
        if cfg.densify not in DENSIFY_MODES:
            raise ValueError(f"method.densify must be one of {', '.join(DENSIFY_MODES)}; got {cfg.densify!r}.")
        self.net = build_backbone(arch, in_channels, patch_size, reconstruction=True)
        if not self.net.supports_sparse_encoding:
            raise ValueError(
                f"SparK needs sparse (masked) convolutions, which the {self.net.family} family of {arch.name} has "
                "not: SparK is a CNN-only method (architecture must be ResEncL or ResEncTiny)."
            )
        unit_grid = self.net.unit_grid(self.patch_size, cfg.block_size)
        self.densify = nn.ModuleList(
            Densify(channels, unit_repeat(grid, unit_grid) is not None, cfg.densify, index > 0, cfg.mask_token_std)
            for index, (channels, grid) in enumerate(self.net.map_shapes(self.patch_size))
        )

    def draw_ratio(self) -> float:
        """This step's mask ratio: ``mask_ratio``, or ``U(lo, hi)`` from torch's generator with ``mask_ratio_range``."""
        if self.cfg.mask_ratio_range is None:
            return float(self.cfg.mask_ratio)
        lo, hi = (float(v) for v in self.cfg.mask_ratio_range)
        return lo + (hi - lo) * float(torch.rand(()))

    def densified(self, features: Features) -> Features:
        """The stage maps with masked positions filled (see the module docstring), for the decoder."""
        assert features.active is not None
        maps = [layer(m, a) for layer, m, a in zip(self.densify, features.maps, features.active)]
        return Features(maps=maps, native_grid=features.native_grid, active=features.active)

    def forward(self, batch: dict[str, torch.Tensor]) -> StepOutput:
        x = batch["image"]
        ratio = self.draw_ratio()
        mask = self.net.draw_mask(x.shape[0], ratio, self.cfg.block_size, device=x.device)
        prediction = self.net.decode(self.densified(self.net.encode_sparse(x, mask)))
        voxels = mask.voxels()
        loss = masked_mse(prediction, x, voxels)
        return StepOutput(loss=loss, metrics={"masked_fraction": float(voxels.mean().detach()), "mask_ratio": ratio})
