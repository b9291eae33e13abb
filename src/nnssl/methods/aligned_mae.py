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
* Dense features (:meth:`nnssl.backbones.Features.dense` on ``dense_grid``, default the backbone's native grid):
  student = features of the masked input that :meth:`~nnssl.backbones.Backbone.reconstruct` returns, through the
  backbone's context decoder (Primus: encoder tokens with the mask token scattered back, then a 2-block Eva
  feature decoder; ResEnc: the encoder stages of the zeroed input as they are, every stage adaptively
  average-pooled to ``dense_grid``^3 and concatenated, 1120 channels for ResEnc-L); teacher = the unmasked
  crop's features. Projector per voxel (+ predictor for the student), then ROI-aligned to ``roi_grid`` cells over
  each crop's overlap box (:func:`nnssl.losses.alignment.roi_align`).
* Global latent (``global_pool``): ``"mean"`` (global average pool of every map, concatenated; the ResEnc presets)
  or ``"attention"`` (softmax of a learned linear score over the dense positions; the Primus presets). Projector
  (+ predictor for the student).

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
from torch import nn

from nnssl.architectures import check_patch_size
from nnssl.architectures.spec import ArchitectureSpec
from nnssl.backbones import Features, build_backbone
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
from nnssl.methods.heads import GLOBAL_POOLS, PredictorHead, ProjectionHead, make_global_pool
from nnssl.methods.registry import METHODS
from nnssl.methods.teacher import EMATeacher
from nnssl.transforms.intensity import IntensityAugmentation
from nnssl.transforms.overlap_views import OverlapViews

logger = logging.getLogger(__name__)

ALIGNMENTS = ("cosine", "gram", "contrastive")


@dataclass
class AlignedMAEConfig:
    """AlignedMAE hyper-parameters (challenge values of methods.md 1.6).

    ``crop_size``: the views the backbone sees (the sampled ``train.patch_size`` is the base patch they are cut
    from; see :func:`nnssl.transforms.overlap_views.min_base_size`). ``overlap_range``: range of the total
    volumetric overlap t. ``alignment``: "cosine" (CVA), "gram" or "contrastive" (C-CVA). ``dense_grid``: the
    common grid of the dense features (None: the backbone's native grid, 1/8 of the crop). ``global_pool``:
    "mean" or "attention". ``use_predictor``: the student's predictor head (off only for tests).
    ``reconstruction_target``: "view" (the intensity-augmented crop, as the reference) or "clean" (the crop before
    intensity augmentation). ``low_resolution_p``: per-crop probability of simulated low resolution (the reference
    applied it to the shared base patch).
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
    dense_grid: int | None = None
    global_pool: str = "mean"
    projector_hidden_dim: int = 2048
    projector_dim: int = 2048
    predictor_hidden_dim: int = 512
    use_predictor: bool = True
    reconstruction_target: str = "view"
    intensity_augmentation: bool = True
    low_resolution_p: float = 0.1

    def validate(self, run: object) -> None:
        """Check ``run`` (the RunConfig) before anything starts: choices, ranges, crops that fit."""
        from nnssl.config import require, require_fits, require_mask_units, require_patch_multiple

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
        require_mask_units(run, "method.block_size", self.block_size, self.crop_size)


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


@METHODS.register("AlignedMAE")
class AlignedMAE(SSLMethod):
    """MAE student + EMA teacher with consistent view alignment; ``backbone()`` is the downstream network."""

    config_cls = AlignedMAEConfig
    presets_module = "nnssl.presets.aligned_mae"

    def __init__(
        self, cfg: AlignedMAEConfig, arch: ArchitectureSpec, patch_size: tuple[int, int, int], in_channels: int = 1
    ) -> None:
        super().__init__(cfg, arch, patch_size, in_channels)
        if cfg.alignment not in ALIGNMENTS:
            raise ValueError(f"method.alignment must be one of {ALIGNMENTS}, got '{cfg.alignment}'.")
        if cfg.global_pool not in GLOBAL_POOLS:
            raise ValueError(f"method.global_pool must be one of {GLOBAL_POOLS}, got '{cfg.global_pool}'.")
        if cfg.reconstruction_target not in ("view", "clean"):
            raise ValueError(
                f"method.reconstruction_target must be 'view' or 'clean', got '{cfg.reconstruction_target}'."
            )
        if cfg.w_rec <= 0:
            raise ValueError(
                f"method.w_rec must be > 0 (AlignedMAE is MAE plus alignment), got {cfg.w_rec}; for alignment terms "
                "alone use a contrastive method."
            )
        self.crop_size = check_patch_size(arch, cfg.crop_size)
        if any(c > p for c, p in zip(self.crop_size, self.patch_size)):
            raise ValueError(
                f"method.crop_size {list(self.crop_size)} is larger than the sampled patch train.patch_size "
                f"{list(self.patch_size)}; the crops are cut from that patch."
            )
        self.need_dense, self.need_global = cfg.w_cva != 0, cfg.w_con != 0
        self.net = build_backbone(
            arch,
            in_channels,
            self.crop_size,
            reconstruction=True,
            decoder_depth=cfg.decoder_depth,
            mask_token_std=cfg.mask_token_std,
        )
        self.net.unit_grid(self.crop_size, cfg.block_size)  # the mask units must tile the crop
        self.teacher: EMATeacher | None = None
        self.pretrained_report: dict[str, list[str]] = {}
        if not (self.need_dense or self.need_global):
            return  # plain MAE on the crops: no heads, no teacher
        # a zero-weighted term is not built, so every trainable parameter gets a gradient (DDP needs no search)
        self.context = self.net.context_decoder(cfg.feature_decoder_depth)
        self.pool = make_global_pool(cfg.global_pool, self.net.feature_dim) if self.need_global else None
        self.projector = ProjectionHead(
            self.net.feature_dim, cfg.projector_hidden_dim, cfg.projector_dim, num_layers=3, norm="batch_no_stats"
        )
        self.predictor = (
            PredictorHead(cfg.projector_dim, cfg.predictor_hidden_dim, cfg.projector_dim) if cfg.use_predictor else None
        )
        mirrored = {"net": self.net, "projector": self.projector}
        if self.pool is not None:
            mirrored["pool"] = self.pool
        self.teacher = EMATeacher(nn.ModuleDict(mirrored), cfg.teacher_momentum)

    # ------------------------------------------------------------------ engine contract
    def network_patch_size(self) -> tuple[int, ...]:
        return self.crop_size

    def min_images_per_batch(self) -> tuple[int, str]:
        if self.need_global:
            return 2, (
                f"the global contrastive term (method.w_con={self.cfg.w_con}) takes its negatives from other images; "
                "the other view of the same image is not one. Set --set method.w_con=0 to train without it"
            )
        return 1, ""

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

    def on_pretrained_weights_loaded(self, path: str, loaded: Sequence[str], not_loaded: Sequence[str]) -> None:
        """Complete the MAE start and make the teacher a copy of the loaded student.

        ``network_weights`` hold the downstream network only; an MAE checkpoint's reconstruction parts (Primus: the
        light decoder and the mask token) live in its ``method_state`` under ``net.`` (the same names as here), so
        they are loaded from there when the shapes match. Everything else of the method (projector, predictor,
        context decoder, pooling) keeps its fresh initialisation. The report is logged and kept in
        ``self.pretrained_report``; then every EMA teacher is re-copied from the student.
        """
        from nnssl.engine.checkpoint import load_checkpoint  # the engine imports methods: import late

        checkpoint = load_checkpoint(path)
        method_state = checkpoint.get("method_state") or {}
        backbone_loaded = {f"net.network.{k}" for k in loaded}
        teachers = tuple(self.teachers())
        own = {k: v for k, v in self.state_dict().items() if not any(k == t or k.startswith(t + ".") for t in teachers)}
        extra = {
            k: v
            for k, v in method_state.items()
            if k.startswith("net.")
            and k not in backbone_loaded
            and k in own
            and isinstance(v, torch.Tensor)
            and tuple(v.shape) == tuple(own[k].shape)
        }
        if extra:
            self.load_state_dict(extra, strict=False)
        fresh = sorted(k for k in own if k not in backbone_loaded and k not in extra)
        fresh_modules = sorted({k.rsplit(".", 1)[0] if k.startswith("net.") else k.split(".")[0] for k in fresh})
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
        super().on_pretrained_weights_loaded(path, loaded, not_loaded)

    # ------------------------------------------------------------------ features
    def _heads(
        self, features: Features, pool: nn.Module | None, projector: nn.Module, predictor: nn.Module | None
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        def head(x: torch.Tensor) -> torch.Tensor:
            x = projector(x)
            return predictor(x) if predictor is not None else x

        dense = head(features.dense(self.cfg.dense_grid).movedim(1, -1)).movedim(-1, 1) if self.need_dense else None
        pooled = head(pool(features)) if pool is not None else None
        return dense, pooled

    def _student(self, x: torch.Tensor) -> tuple[_Outputs, torch.Tensor]:
        """Student outputs on the masked crops and the voxel mask (1 = masked)."""
        mask = self.net.draw_mask(x.shape[0], self.cfg.mask_ratio, self.cfg.block_size, device=x.device)
        out = self.net.reconstruct(x, mask)
        dense = pooled = None
        if self.teacher is not None:
            dense, pooled = self._heads(self.context(out.features), self.pool, self.projector, self.predictor)
        return _Outputs(out.prediction, dense, pooled), mask.voxels()

    @torch.no_grad()
    def _teacher(self, x: torch.Tensor) -> _Outputs:
        """Teacher outputs on the unmasked crops (eval mode, no gradient, no predictor)."""
        teacher = self.teacher
        pool = teacher["pool"] if self.need_global else None
        dense, pooled = self._heads(teacher["net"].encode(x), pool, teacher["projector"], None)
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
        student, mask = self._student(x)
        teacher = self._teacher(x) if self.teacher is not None else None
        zero = x.new_zeros((), dtype=torch.float32)
        rec = masked_huber(student.reconstruction, target, mask)
        metrics = {
            "loss_rec": float(rec.detach()),
            "mse": float(masked_mse(student.reconstruction.detach(), target, mask)),
        }
        cva = con = zero
        if self.need_dense:
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
        if self.need_global:
            assert teacher is not None and student.global_ is not None and teacher.global_ is not None
            con, acc = nt_xent(
                student.global_, teacher.global_.roll(b, dims=0), cfg.temperature, same_image_aware=True, gather=True
            )
            metrics["loss_con"] = float(con.detach())
            metrics["acc"] = float(acc)
        loss = cfg.w_rec * rec + cfg.w_cva * cva + cfg.w_con * con
        return StepOutput(loss=loss, metrics=metrics)
