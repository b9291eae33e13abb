"""AlignedMAE: MAE + consistent view alignment (CVA) + a weak global contrastive term, with an EMA teacher.

Vaish et al. 2025, "Consistent View Alignment Improves Foundation Models for 3D Medical Image Segmentation"
(arXiv 2509.13846; team The_Latent_Campus, 1st place SSL3D challenge Primus-M track), methods.md 1.

Stage 2 of a two-stage recipe: start from an MAE checkpoint (``nnssl_train ... -pretrained_weights CKPT``),
then train on two overlapping crops per image (:class:`nnssl.transforms.overlap_views.OverlapViews`), batched as
``[view 1 of images 0..B-1 ; view 2 of images 0..B-1]`` (2B crops; crop ``k``'s partner is ``k' = (k + B) mod 2B``).

* Student (trained) sees the masked crop: ResEnc: 75% of 16^3 blocks zeroed; Primus: 75% of the tokens dropped.
  Reconstruction as MAE, scored with Huber (delta 1) on masked voxels only.
* EMA teacher (``theta_T <- m theta_T + (1 - m) theta_S``, m = 0.995 constant, parameters only) sees the
  unmasked crop, in eval mode, without gradient and without predictor. It is a copy of the student made at
  construction and made again by :meth:`AlignedMAE.on_pretrained_weights_loaded`, so teacher = student at step 0.
* Dense features: ResEnc: every encoder stage adaptively average-pooled to a common ``dense_grid``^3 and
  concatenated (1120 channels for ResEnc-L); Primus: student = encoder tokens with the mask token scattered
  back, through a 2-block Eva feature decoder; teacher = encoder output on all tokens. Projector per voxel
  (+ predictor for the student), then ROI-aligned to ``roi_grid`` cells over each crop's overlap box
  (:func:`nnssl.losses.alignment.roi_align`).
* Global latent: ResEnc: global average pool of every stage, concatenated; Primus: attention pooling of the
  dense tokens (softmax of a learned linear score). Projector (+ predictor for the student).

Loss ``L = w_rec L_rec + w_cva L_cva + w_con L_con`` (5.0, 1.0, 0.1):
``L_rec = sum huber(xhat - x) M / sum M`` (M = 1 on masked voxels), ``L_cva = 2 - 2 mean_{k,g} <P_k(g), Q_k(g)>``
with ``P_k = norm ROI(S_k, box_k)``, ``Q_k = norm ROI(sg T_{k'}, box_{k'})`` (or the Gram / C-CVA variants),
``L_con`` = same-image-aware NT-Xent (tau 0.5) between ``u_k`` = student global and ``v_k`` = teacher global of
``k'``. Logged: each term, the NT-Xent accuracy ``acc``, ``cw_std`` (teacher dense embedding spread, ~1 healthy,
-> 0 collapsed) and ``cw_std_student``, the masked MSE.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from dynamic_network_architectures.building_blocks.eva import Eva
from torch import nn

from nnssl.architectures import check_patch_size
from nnssl.architectures.primus import eva_forward_tokens, flatten_tokens, unflatten_tokens
from nnssl.architectures.spec import ArchitectureSpec
from nnssl.losses.alignment import (
    channel_std_ratio,
    cva_contrastive_loss,
    cva_cosine_loss,
    cva_gram_loss,
    masked_huber,
    roi_align,
)
from nnssl.losses.contrastive import nt_xent
from nnssl.losses.reconstruction import masked_mse
from nnssl.methods.base import SSLMethod, StepOutput, Transform
from nnssl.methods.features import is_token_backbone, pooled_dim
from nnssl.methods.heads import PredictorHead, ProjectionHead
from nnssl.methods.primus_mae_network import PrimusMAENetwork
from nnssl.methods.registry import METHODS
from nnssl.methods.teacher import ema_update_, make_teacher
from nnssl.transforms.intensity import IntensityAugmentation
from nnssl.transforms.masking import blocky_mask, random_keep_indices
from nnssl.transforms.overlap_views import OverlapViews

logger = logging.getLogger(__name__)

ALIGNMENTS = ("cosine", "gram", "contrastive")


@dataclass
class AlignedMAEConfig:
    """AlignedMAE hyper-parameters (challenge values of methods.md 1.6).

    ``crop_size``: the views the backbone sees (the sampled ``train.patch_size`` is the base patch they are cut
    from; see :func:`nnssl.transforms.overlap_views.min_base_size`). ``overlap_range``: range of the total
    volumetric overlap t. ``alignment``: "cosine" (CVA), "gram" or "contrastive" (C-CVA). ``dense_grid``: the
    common grid of the pooled ResEnc stages. ``use_predictor``: the student's predictor head (off only for
    tests). ``reconstruction_target``: "view" (the intensity-augmented crop, as the reference) or "clean" (the
    crop before intensity augmentation). ``low_resolution_p``: per-crop probability of simulated low
    resolution (the reference applied it to the shared base patch).
    """

    crop_size: tuple[int, int, int] = (128, 128, 128)
    overlap_range: tuple[float, float] = (0.4, 0.8)
    mask_ratio: float = 0.75
    block_size: int = 16
    decoder_depth: int = 2
    feature_decoder_depth: int = 2
    mask_token_std: float = 1e-6
    w_rec: float = 5.0
    w_cva: float = 1.0
    w_con: float = 0.1
    alignment: str = "cosine"
    teacher_momentum: float = 0.995
    temperature: float = 0.5
    roi_grid: tuple[int, int, int] = (7, 7, 7)
    roi_oversample: int = 2
    dense_grid: int = 16
    projector_hidden_dim: int = 2048
    projector_dim: int = 2048
    predictor_hidden_dim: int = 512
    use_predictor: bool = True
    reconstruction_target: str = "view"
    intensity_augmentation: bool = True
    low_resolution_p: float = 0.1

    def validate(self, run: object) -> None:
        """Check ``run`` (the RunConfig) before anything starts: choices, ranges, crops that fit."""
        from nnssl.config import architecture_of, require, require_fits, require_patch_multiple

        require(self.alignment in ALIGNMENTS, "method.alignment", self.alignment, f"one of {', '.join(ALIGNMENTS)}")
        require(
            self.reconstruction_target in ("view", "clean"),
            "method.reconstruction_target",
            self.reconstruction_target,
            "'view' or 'clean'",
        )
        low, high = self.overlap_range
        require(0.0 < low <= high <= 1.0, "method.overlap_range", self.overlap_range, "0 < low <= high <= 1")
        require(0.0 <= self.mask_ratio < 1.0, "method.mask_ratio", self.mask_ratio, "in [0, 1)")
        require(0.0 <= self.teacher_momentum <= 1.0, "method.teacher_momentum", self.teacher_momentum, "in [0, 1]")
        require(self.temperature > 0, "method.temperature", self.temperature, "> 0")
        require(0.0 <= self.low_resolution_p <= 1.0, "method.low_resolution_p", self.low_resolution_p, "in [0, 1]")
        for key in ("w_rec", "w_cva", "w_con"):
            require(getattr(self, key) >= 0, f"method.{key}", getattr(self, key), ">= 0")
        require(self.block_size >= 1, "method.block_size", self.block_size, ">= 1")
        require_patch_multiple(run, "method.crop_size", self.crop_size)
        require_fits("method.crop_size", self.crop_size, run)
        if not architecture_of(run).token_masking:
            require(
                all(c % self.block_size == 0 for c in self.crop_size),
                "method.block_size",
                self.block_size,
                f"a divisor of every side of method.crop_size={tuple(self.crop_size)}",
            )


@dataclass
class _Outputs:
    reconstruction: torch.Tensor | None
    dense: torch.Tensor | None  # (N, C, g0, g1, g2) projected dense features
    global_: torch.Tensor | None  # (N, C) projected global latent


def check_view_layout(n_views: int, n_images: int) -> None:
    """The loss needs ``[view 1 of images 0..B-1 ; view 2 of images 0..B-1]``: exactly 2B rows."""
    if n_views != 2 * n_images or n_images < 1:
        raise ValueError(
            f"AlignedMAE expects two views per image stacked as [view 1 ; view 2] (2B = {2 * n_images} crops), "
            f"got {n_views}."
        )


def attention_pool(tokens: torch.Tensor, score: nn.Linear) -> torch.Tensor:
    """(B, N, D) -> (B, D): softmax over tokens of a learned linear score, weighted sum (in fp32)."""
    weights = torch.softmax(score(tokens).float(), dim=1)
    return (weights * tokens.float()).sum(dim=1)


@METHODS.register("AlignedMAE")
class AlignedMAE(SSLMethod):
    """MAE student + EMA teacher with consistent view alignment; ``backbone()`` is the downstream network."""

    config_cls = AlignedMAEConfig

    def __init__(
        self, cfg: AlignedMAEConfig, arch: ArchitectureSpec, patch_size: tuple[int, int, int], in_channels: int = 1
    ) -> None:
        super().__init__(cfg, arch, patch_size, in_channels)
        if cfg.alignment not in ALIGNMENTS:
            raise ValueError(f"method.alignment must be one of {ALIGNMENTS}, got '{cfg.alignment}'.")
        if cfg.reconstruction_target not in ("view", "clean"):
            raise ValueError(
                f"method.reconstruction_target must be 'view' or 'clean', got '{cfg.reconstruction_target}'."
            )
        self.crop_size = check_patch_size(arch, cfg.crop_size)
        if any(c > p for c, p in zip(self.crop_size, self.patch_size)):
            raise ValueError(
                f"method.crop_size {list(self.crop_size)} is larger than the sampled patch train.patch_size "
                f"{list(self.patch_size)}; the crops are cut from that patch."
            )
        self.token_masking = is_token_backbone(arch)
        network = arch.build(in_channels, in_channels, self.crop_size)
        if self.token_masking:
            self.network: nn.Module = PrimusMAENetwork(network, self.crop_size, cfg.decoder_depth, cfg.mask_token_std)
            dim = int(network.embed_dim)
            heads = int(network.eva.blocks[0].attn.num_heads)
            self.feature_decoder = Eva(
                embed_dim=dim,
                depth=cfg.feature_decoder_depth,
                num_heads=heads,
                ref_feat_shape=self.network.grid,
                use_abs_pos_emb=True,
                use_rot_pos_emb=True,
                init_values=0.1,
                scale_attn_inner=True,
            )
            self.pool_score = nn.Linear(dim, 1)
        else:
            if any(p % cfg.block_size for p in self.crop_size):
                raise ValueError(
                    f"AlignedMAE block_size {cfg.block_size} must divide the crop size {list(self.crop_size)}; "
                    "set method.block_size or method.crop_size."
                )
            self.network = network
        feature_dim = pooled_dim(arch, self.backbone())
        self.projector = ProjectionHead(
            feature_dim, cfg.projector_hidden_dim, cfg.projector_dim, num_layers=3, norm="batch_no_stats"
        )
        self.predictor = (
            PredictorHead(cfg.projector_dim, cfg.predictor_hidden_dim, cfg.projector_dim) if cfg.use_predictor else None
        )
        self.teacher = make_teacher(self._teacher_source())
        # a zero-weighted term is not computed, so its parameters get no gradient under DDP
        self.ddp_find_unused_parameters = cfg.w_cva == 0 or cfg.w_con == 0 or cfg.w_rec == 0
        self.pretrained_report: dict[str, list[str]] = {}

    # ------------------------------------------------------------------ engine contract
    def network_patch_size(self) -> tuple[int, ...]:
        return self.crop_size

    def backbone(self) -> nn.Module:
        return self.network.backbone if self.token_masking else self.network

    def ddp_ignored_prefixes(self) -> tuple[str, ...]:
        return ("teacher",)

    def train(self, mode: bool = True) -> AlignedMAE:
        super().train(mode)
        self.teacher.eval()
        return self

    def on_step_end(self, step: int, max_steps: int) -> None:
        ema_update_(self.teacher, self._teacher_source(), self.cfg.teacher_momentum)

    def train_transform(self) -> Transform:
        cfg = self.cfg
        intensity = IntensityAugmentation(p_low_resolution=cfg.low_resolution_p)
        if not cfg.intensity_augmentation:
            intensity = IntensityAugmentation.none()
        return OverlapViews(
            self.crop_size, cfg.overlap_range, intensity, return_clean=cfg.reconstruction_target == "clean"
        )

    def val_transform(self) -> Transform:
        return OverlapViews(
            self.crop_size,
            self.cfg.overlap_range,
            IntensityAugmentation.none(),
            return_clean=self.cfg.reconstruction_target == "clean",
            deterministic=True,
        )

    # ------------------------------------------------------------------ teacher
    def _teacher_source(self) -> nn.ModuleDict:
        """The student modules the teacher mirrors (built on the fly: no second registration of the student)."""
        if self.token_masking:
            modules = {"backbone": self.network.backbone, "pool_score": self.pool_score, "projector": self.projector}
        else:
            modules = {"encoder": self.network.encoder, "projector": self.projector}
        return nn.ModuleDict(modules)

    @torch.no_grad()
    def reset_teacher(self) -> None:
        """Teacher := student (parameters and buffers), e.g. after loading pretrained weights."""
        self.teacher.load_state_dict(self._teacher_source().state_dict())

    def on_pretrained_weights_loaded(self, path: str, loaded: Sequence[str], not_loaded: Sequence[str]) -> None:
        """Complete the MAE start and make the teacher a copy of the loaded student.

        ``network_weights`` of a Primus MAE checkpoint hold the backbone only; its MAE decoder and mask token
        live in ``method_state`` under ``network.`` (the same names as here), so they are loaded from there when
        the shapes match. Everything else of the method (projector, predictor, Primus feature decoder and pooling
        score) keeps its fresh initialisation. The report is logged and kept in ``self.pretrained_report``.
        """
        from nnssl.engine.checkpoint import load_checkpoint  # the engine imports methods: import late

        checkpoint = load_checkpoint(path)
        method_state = checkpoint.get("method_state") or {}
        prefix = "backbone." if self.token_masking else ""
        backbone_loaded = {f"network.{prefix}{k}" for k in loaded}
        own = {k: v for k, v in self.state_dict().items() if not k.startswith("teacher.")}
        extra = {
            k: v
            for k, v in method_state.items()
            if k.startswith("network.")
            and k not in backbone_loaded
            and k in own
            and isinstance(v, torch.Tensor)
            and tuple(v.shape) == tuple(own[k].shape)
        }
        if extra:
            self.load_state_dict(extra, strict=False)
        self.reset_teacher()
        fresh = sorted(k for k in own if k not in backbone_loaded and k not in extra)
        fresh_modules = sorted(
            {k.split(".")[0] if not k.startswith("network.") else k.rsplit(".", 1)[0] for k in fresh}
        )
        self.pretrained_report = {
            "backbone_loaded": sorted(loaded),
            "backbone_not_loaded": sorted(not_loaded),
            "mae_head_loaded": sorted(extra),
            "fresh": fresh,
        }
        logger.info(
            "AlignedMAE start from %s: backbone %d tensors loaded, %d not loaded%s; MAE decoder/mask token %d tensors "
            "loaded from method_state; freshly initialised: %d tensors in %s; EMA teacher reset to the student.",
            path,
            len(loaded),
            len(not_loaded),
            f" ({', '.join(sorted(not_loaded)[:5])})" if not_loaded else "",
            len(extra),
            len(fresh),
            ", ".join(fresh_modules[:8]) + (" ..." if len(fresh_modules) > 8 else ""),
        )

    # ------------------------------------------------------------------ features
    def _dense_and_global_resenc(self, stages: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        grid = (self.cfg.dense_grid,) * 3
        dense = torch.cat([F.adaptive_avg_pool3d(s, grid) for s in stages], dim=1)
        pooled = torch.cat([s.mean(dim=(2, 3, 4)) for s in stages], dim=1)
        return dense, pooled

    def _heads(
        self, dense: torch.Tensor | None, pooled: torch.Tensor | None, projector: nn.Module, predictor: nn.Module | None
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        def head(x: torch.Tensor) -> torch.Tensor:
            x = projector(x)
            return predictor(x) if predictor is not None else x

        dense_out = None
        if dense is not None:
            dense_out = head(dense.movedim(1, -1)).movedim(-1, 1)
        return dense_out, head(pooled) if pooled is not None else None

    def _student(self, x: torch.Tensor, need_dense: bool, need_global: bool) -> tuple[_Outputs, torch.Tensor]:
        """Student outputs on the masked crops and the voxel mask (1 = masked)."""
        n = x.shape[0]
        if self.token_masking:
            net: PrimusMAENetwork = self.network  # type: ignore[assignment]
            keep = random_keep_indices(n, net.num_tokens, self.cfg.mask_ratio, device=x.device)
            full = net.fill_mask_tokens(net.encode(x, keep), keep)
            decoded, _ = net.decoder(full)
            reconstruction = net.backbone.up_projection(unflatten_tokens(decoded, net.grid))
            mask = net.masked_voxels(keep)
            dense = pooled = None
            if need_dense or need_global:
                tokens, _ = self.feature_decoder(full)
                dense = unflatten_tokens(tokens, net.grid) if need_dense else None
                pooled = attention_pool(tokens, self.pool_score) if need_global else None
        else:
            mask = blocky_mask(n, x.shape[2:], self.cfg.block_size, self.cfg.mask_ratio, device=x.device)
            stages = self.network.encoder(x * (1.0 - mask).to(x.dtype))
            reconstruction = self.network.decoder(stages)
            if isinstance(reconstruction, (list, tuple)):
                reconstruction = reconstruction[0]
            dense, pooled = self._dense_and_global_resenc(stages)
            dense = dense if need_dense else None
            pooled = pooled if need_global else None
        dense, pooled = self._heads(dense, pooled, self.projector, self.predictor)
        return _Outputs(reconstruction, dense, pooled), mask

    @torch.no_grad()
    def _teacher(self, x: torch.Tensor, need_dense: bool, need_global: bool) -> _Outputs:
        """Teacher outputs on the unmasked crops (eval mode, no gradient, no predictor)."""
        teacher = self.teacher
        if self.token_masking:
            backbone = teacher["backbone"]
            tokens = eva_forward_tokens(backbone.eva, flatten_tokens(backbone.down_projection(x)))
            dense = unflatten_tokens(tokens, self.network.grid) if need_dense else None
            pooled = attention_pool(tokens, teacher["pool_score"]) if need_global else None
        else:
            dense, pooled = self._dense_and_global_resenc(teacher["encoder"](x))
            dense = dense if need_dense else None
            pooled = pooled if need_global else None
        dense, pooled = self._heads(dense, pooled, teacher["projector"], None)
        return _Outputs(None, dense, pooled)

    # ------------------------------------------------------------------ step
    def forward(self, batch: dict[str, torch.Tensor]) -> StepOutput:
        views, boxes = batch["views"], batch["boxes"]
        if views.dim() != 6 or views.shape[1] != 2 or boxes.shape[:2] != (views.shape[0], 2):
            raise ValueError(
                "AlignedMAE batches need 'views' (B, 2, C, X, Y, Z) and 'boxes' (B, 2, 6) from OverlapViews; got "
                f"{tuple(views.shape)} and {tuple(boxes.shape)}."
            )
        b = views.shape[0]
        x = torch.cat([views[:, 0], views[:, 1]])  # [view 1 of images 0..B-1 ; view 2 of images 0..B-1]
        box = torch.cat([boxes[:, 0], boxes[:, 1]])
        check_view_layout(x.shape[0], b)
        target = torch.cat([batch["clean"][:, 0], batch["clean"][:, 1]]) if "clean" in batch else x
        cfg = self.cfg
        need_dense, need_global = cfg.w_cva != 0, cfg.w_con != 0
        student, mask = self._student(x, need_dense, need_global)
        teacher = self._teacher(x, need_dense, need_global) if need_dense or need_global else None
        zero = x.new_zeros((), dtype=torch.float32)
        rec = masked_huber(student.reconstruction, target, mask)
        metrics = {
            "loss_rec": float(rec.detach()),
            "mse": float(masked_mse(student.reconstruction.detach(), target, mask)),
        }
        cva = con = zero
        if need_dense:
            assert teacher is not None and student.dense is not None and teacher.dense is not None
            p = roi_align(student.dense, box, cfg.roi_grid, cfg.roi_oversample)
            # row k of q: the partner view k' = (k + B) mod 2B, aligned over its own box (the same region)
            q = roi_align(teacher.dense, box, cfg.roi_grid, cfg.roi_oversample).roll(b, dims=0)
            if cfg.alignment == "cosine":
                cva = cva_cosine_loss(p, q)
            elif cfg.alignment == "gram":
                cva = cva_gram_loss(p, q)
            else:
                cva = cva_contrastive_loss(p, q, cfg.temperature)
            metrics["loss_cva"] = float(cva.detach())
            metrics["cw_std"] = channel_std_ratio(teacher.dense.movedim(1, -1))
            metrics["cw_std_student"] = channel_std_ratio(student.dense.movedim(1, -1))
        if need_global:
            assert teacher is not None and student.global_ is not None and teacher.global_ is not None
            con, acc = nt_xent(
                student.global_, teacher.global_.roll(b, dims=0), cfg.temperature, same_image_aware=True, gather=True
            )
            metrics["loss_con"] = float(con.detach())
            metrics["acc"] = float(acc)
        loss = cfg.w_rec * rec + cfg.w_cva * cva + cfg.w_con * con
        return StepOutput(loss=loss, metrics=metrics)
