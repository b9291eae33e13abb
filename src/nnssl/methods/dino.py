"""3D DINO (DINOv2-style: DINO + iBOT + KoLeo) on Primus and ResEnc backbones.

Caron et al. 2021, "Emerging Properties in Self-Supervised Vision Transformers"; Zhou et al. 2022, "iBOT";
Oquab et al. 2024, "DINOv2". Recipe and small-batch choices: methods.md 2.2 and 2.5; losses in
:mod:`nnssl.losses.dino`; documentation in ``documentation/dino.md``.

Total loss ``L = L_dino + ibot_weight * L_ibot + koleo_weight * L_koleo`` with

* views (:class:`nnssl.transforms.multicrop.MultiCropTransform`): 2 global crops (``global_crop_size``, the
  backbone's build size and ``network_patch_size()``) and ``num_local_crops`` local crops per volume;
* student = backbone + DINO head (+ iBOT head for Primus); teacher = EMA copy of all three
  (:mod:`nnssl.methods.teacher`), momentum cosine ``momentum_start -> 1`` over all optimizer steps;
* "CLS" (the input of the DINO head and of KoLeo): Primus: the MEAN over the Eva output tokens (dna's Primus has
  no CLS token, and the downstream network has none either, so no CLS weights would survive pre-training);
  ResEnc: the global average pool of every encoder stage, concatenated (1120-d for ResEnc-L;
  :meth:`nnssl.backbones.Features.pooled`). KoLeo and the effective rank use this raw CLS; the DINO
  head gets it through ``cls_norm``: with ``cls_standardization="auto"`` (default) a
  :class:`nnssl.methods.dino_head.RunningStandardization` on ResEnc (per-dimension running mean/variance of the
  teacher's global-view CLS, updated after the loss in training, momentum ``cls_standardization_momentum``, shared
  by student and teacher) and the identity on Primus. Every ResEnc stage ends in InstanceNorm + residual add +
  LeakyReLU, so its GAP is nearly the same for every input (between-sample spread ~4 % of the vector on the
  demo data); unstandardised, the head maps all samples to the same code, centring removes it and the
  targets go uniform (documentation/dino.md, "Why ResEnc collapsed");
* iBOT (Primus only): per global view, with probability ``ibot_sample_probability`` an image gets a ratio
  ``r ~ U(ibot_mask_ratio)`` and ``floor(r N)`` (>= 1) uniformly chosen tokens masked: the learned
  ``mask_token`` replaces them in patch-grid coordinates right after the patch embedding, before the positional
  embedding (there are no prefix tokens at all, so the mask/CLS offset bug of methods.md 2.3 cannot occur).
  The teacher sees the unmasked view; the loss runs over the masked tokens only. ResEnc has NO iBOT term (a
  dense alternative is AlignedMAE's alignment; asking for ``ibot=True`` on ResEnc is an error).
* local crops on Primus: the learned ``pos_embed`` (sized for the global grid) is resampled trilinearly to
  the local grid and the RoPE table is rebuilt for the local grid with timm's ``ref_feat_shape`` scaling,
  so both positional encodings map the local grid onto the same normalised extent as the global one
  (:meth:`nnssl.backbones.transformer.TransformerBackbone.encode`).

Schedules by optimizer step: teacher temperature linear ``teacher_temp_start -> teacher_temp_end`` over
``teacher_temp_warmup_epochs`` epochs (epochs from ``configure_schedule``, called by the engine), EMA
momentum, and (engine) the last layers' learning rate 0 for ``freeze_last_layer_epochs`` epochs.
Logged per step: ``dino_loss``, ``ln_K``, ``teacher_entropy`` (H(P_T)/ln K), ``effective_rank`` of the
student's backbone CLS vectors, ``koleo``, ``ibot``, ``teacher_temp``, ``ema_momentum``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from nnssl.architectures import check_patch_size
from nnssl.architectures.spec import ArchitectureSpec
from nnssl.backbones import build_backbone
from nnssl.losses.dino import (
    CenteredTargets,
    dino_cross_view_loss,
    effective_rank,
    ibot_masked_loss,
    koleo_loss,
    mean_pairwise_cosine,
    teacher_entropy_ratio,
)
from nnssl.methods.base import SSLMethod, StepOutput, Transform
from nnssl.methods.dino_head import LAST_LAYER_NAME, DINOHead, RunningStandardization
from nnssl.methods.registry import METHODS
from nnssl.methods.teacher import EMATeacher
from nnssl.transforms.intensity import IntensityAugmentation
from nnssl.transforms.multicrop import MultiCropTransform

logger = logging.getLogger(__name__)


#: iBOT mask layouts: uniform random tokens, or DINOv2's block masks (:func:`nnssl.transforms.masking.draw_block_mask`).
IBOT_MASK_MODES = ("random", "block")


@dataclass
class DINOConfig:
    """DINO hyper-parameters (defaults: the small-batch recipe of methods.md 2.5; see documentation/dino.md)."""

    num_prototypes: int = 8192
    head_hidden_dim: int = 2048
    head_bottleneck_dim: int = 256
    student_temp: float = 0.1
    teacher_temp_start: float = 0.04
    teacher_temp_end: float = 0.07
    teacher_temp_warmup_epochs: int = 30
    centering: str = "mean"
    center_momentum: float = 0.9
    sinkhorn_iterations: int = 3
    sinkhorn_queue: int = 0
    ibot: bool = True
    ibot_weight: float = 1.0
    ibot_mask_ratio: tuple[float, float] = (0.1, 0.5)
    ibot_sample_probability: float = 0.5
    koleo_weight: float = 0.1
    num_local_crops: int = 8
    global_crop_size: int = 96
    local_crop_size: int = 48
    global_crop_scale: tuple[float, float] = (0.5, 1.0)
    local_crop_scale: tuple[float, float] = (0.05, 0.3)
    momentum_start: float = 0.992
    momentum_end: float = 1.0
    freeze_last_layer_epochs: int = 5
    layer_decay: float = 1.0
    patch_embed_lr_mult: float = 1.0
    ibot_mask_mode: str = "random"
    intensity_augmentation: bool = True
    gin_p: float = 0.0
    gin_num_layers: int = 4
    gin_channels: int = 2
    cls_standardization: str = "running"
    cls_standardization_momentum: float = 0.9

    def validate(self, run: object) -> None:
        """Check ``run`` (the RunConfig) before anything starts: choices, ranges, crop sizes, iBOT only on tokens."""
        from nnssl.backbones import family_of
        from nnssl.config import architecture_of, require, require_patch_multiple

        require(self.centering in ("mean", "sinkhorn"), "method.centering", self.centering, "'mean' or 'sinkhorn'")
        require(
            self.cls_standardization in ("auto", "running", "none"),
            "method.cls_standardization",
            self.cls_standardization,
            "'auto', 'running' or 'none'",
        )
        require(self.num_prototypes >= 1, "method.num_prototypes", self.num_prototypes, ">= 1")
        require(self.sinkhorn_queue >= 0, "method.sinkhorn_queue", self.sinkhorn_queue, ">= 0")
        require(self.num_local_crops >= 0, "method.num_local_crops", self.num_local_crops, ">= 0")
        for key in ("student_temp", "teacher_temp_start", "teacher_temp_end"):
            require(getattr(self, key) > 0, f"method.{key}", getattr(self, key), "> 0")
        require(0.0 <= self.center_momentum < 1.0, "method.center_momentum", self.center_momentum, "in [0, 1)")
        require(0.0 <= self.momentum_start <= 1.0, "method.momentum_start", self.momentum_start, "in [0, 1]")
        require(
            self.momentum_start <= self.momentum_end <= 1.0,
            "method.momentum_end",
            self.momentum_end,
            f"in [method.momentum_start={self.momentum_start}, 1]",
        )
        require(0.0 < self.layer_decay <= 1.0, "method.layer_decay", self.layer_decay, "in (0, 1] (1: no decay)")
        require(
            self.patch_embed_lr_mult > 0.0,
            "method.patch_embed_lr_mult",
            self.patch_embed_lr_mult,
            "> 0 (1: the patch embedding learns at its layer's rate)",
        )
        require(
            self.ibot_mask_mode in IBOT_MASK_MODES,
            "method.ibot_mask_mode",
            self.ibot_mask_mode,
            f"one of {', '.join(IBOT_MASK_MODES)}",
        )
        require(0.0 <= self.gin_p <= 1.0, "method.gin_p", self.gin_p, "a probability in [0, 1] (0: no GIN)")
        require(self.gin_num_layers >= 1, "method.gin_num_layers", self.gin_num_layers, ">= 1")
        require(self.gin_channels >= 1, "method.gin_channels", self.gin_channels, ">= 1")
        low, high = self.ibot_mask_ratio
        require(0.0 <= low <= high < 1.0, "method.ibot_mask_ratio", self.ibot_mask_ratio, "0 <= low <= high < 1")
        require(
            0.0 <= self.ibot_sample_probability <= 1.0,
            "method.ibot_sample_probability",
            self.ibot_sample_probability,
            "in [0, 1]",
        )
        for key in ("global_crop_scale", "local_crop_scale"):
            low, high = getattr(self, key)
            require(
                0.0 < low <= high <= 1.0, f"method.{key}", getattr(self, key), "volume fractions 0 < low <= high <= 1"
            )
        require_patch_multiple(run, "method.global_crop_size", self.global_crop_size)
        if self.num_local_crops > 0:
            require_patch_multiple(run, "method.local_crop_size", self.local_crop_size)
        require(
            not self.ibot or family_of(architecture_of(run)).has_patch_tokens,
            "method.ibot",
            self.ibot,
            f"false on {run.architecture} (a CNN has no patch tokens; --set method.ibot=false)",
        )


def ibot_mask_counts(
    batch: int, num_tokens: int, ratio_range: Sequence[float], sample_probability: float, device: torch.device
) -> torch.Tensor:
    """(B,) masked-token counts for iBOT: each image with ``sample_probability`` gets ``max(1, floor(r N))`` tokens,
    ``r ~ U(ratio_range)``; the other images get none."""
    low, high = float(ratio_range[0]), float(ratio_range[1])
    if not 0.0 <= low <= high < 1.0:
        raise ValueError(f"method.ibot_mask_ratio must satisfy 0 <= low <= high < 1, got ({low}, {high}).")
    selected = torch.rand(batch, device=device) < sample_probability
    ratios = low + (high - low) * torch.rand(batch, device=device)
    return torch.clamp(torch.floor(ratios * num_tokens), min=1).long() * selected.long()


@METHODS.register("DINO")
class DINO(SSLMethod):
    """DINOv2-style self-distillation; ``backbone()`` is the downstream network (dna Primus or ResEnc U-Net)."""

    config_cls = DINOConfig
    presets_module = "nnssl.presets.dino"

    def __init__(
        self, cfg: DINOConfig, arch: ArchitectureSpec, patch_size: tuple[int, int, int], in_channels: int = 1
    ) -> None:
        super().__init__(cfg, arch, patch_size, in_channels)
        self.global_size = check_patch_size(arch, (cfg.global_crop_size,) * 3)
        self.local_size = (int(cfg.local_crop_size),) * 3
        if cfg.num_local_crops > 0:
            bad = [s for s in self.local_size if s % arch.patch_multiple or s <= 0]
            if bad:
                raise ValueError(
                    f"method.local_crop_size={cfg.local_crop_size} must be a positive multiple of "
                    f"{arch.patch_multiple} for {arch.name}; e.g. --set method.local_crop_size=48."
                )
        if cfg.centering not in ("mean", "sinkhorn"):
            raise ValueError(f"method.centering must be 'mean' or 'sinkhorn', got '{cfg.centering}'.")
        self.use_ibot = bool(cfg.ibot)
        net = build_backbone(arch, in_channels, self.global_size)
        if self.use_ibot and not net.has_patch_tokens:
            raise ValueError(
                f"iBOT needs patch tokens; {arch.name} ({net.family}) has none. Use --set method.ibot=false "
                "(ResEnc presets train DINO + KoLeo only)."
            )
        feature_dim = net.feature_dim
        student = nn.ModuleDict(
            {
                "backbone": net,
                "dino_head": DINOHead(feature_dim, cfg.num_prototypes, cfg.head_hidden_dim, cfg.head_bottleneck_dim),
            }
        )
        if self.use_ibot:
            student["ibot_head"] = DINOHead(
                feature_dim, cfg.num_prototypes, cfg.head_hidden_dim, cfg.head_bottleneck_dim
            )
            net.add_mask_token(std=0.02, truncated=True)
        self.student = student
        standardize = cfg.cls_standardization
        if standardize not in ("auto", "running", "none"):
            raise ValueError(
                f"method.cls_standardization must be 'auto', 'running' or 'none', got '{standardize}' "
                "('auto' = running standardisation where the backbone's pooled features barely vary between "
                "samples (CNNs), none otherwise)."
            )
        if standardize == "running" or (standardize == "auto" and net.pooled_needs_standardization):
            self.cls_norm: nn.Module = RunningStandardization(feature_dim, cfg.cls_standardization_momentum)
        else:
            self.cls_norm = nn.Identity()
        self.teacher = EMATeacher(student, cfg.momentum_start, final_momentum=cfg.momentum_end)
        self.dino_targets = CenteredTargets(
            cfg.num_prototypes, cfg.centering, cfg.center_momentum, cfg.sinkhorn_iterations, cfg.sinkhorn_queue
        )
        self.ibot_targets = CenteredTargets(
            cfg.num_prototypes, cfg.centering, cfg.center_momentum, cfg.sinkhorn_iterations, cfg.sinkhorn_queue
        )
        self.register_buffer("step_count", torch.zeros((), dtype=torch.long))
        self.steps_per_epoch: int | None = None
        self.total_steps: int | None = None
        if not self.use_ibot:
            logger.info("DINO on %s: no iBOT term; DINO + KoLeo only.", arch.name)
        if cfg.centering == "sinkhorn" and cfg.sinkhorn_queue < cfg.num_prototypes:
            logger.warning(
                "DINO: Sinkhorn-Knopp over B teacher rows (+ method.sinkhorn_queue=%d queued rows) against K=%d "
                "prototypes caps every target at probability (B + queue)/K, i.e. entropy >= ln(K/(B + queue)); with "
                "B << K no target can be sharp. Use --set method.sinkhorn_queue=%d (or more) or method.centering=mean.",
                cfg.sinkhorn_queue,
                cfg.num_prototypes,
                cfg.num_prototypes,
            )

    # ------------------------------------------------------------------ engine hooks
    def network_patch_size(self) -> tuple[int, ...]:
        return self.global_size

    def configure_schedule(self, steps_per_epoch: int, total_steps: int) -> None:
        """Called by the engine before training (and before a resume): epoch length, total optimizer steps."""
        self.steps_per_epoch = int(steps_per_epoch)
        self.total_steps = int(total_steps)

    def on_step_end(self, step: int, max_steps: int) -> None:
        super().on_step_end(step, max_steps)
        self.step_count.fill_(step + 1)

    def param_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        """Weight decay on weights only (:meth:`decay_split_groups`); prototype layers frozen (lr 0, optimizer state
        kept) for ``freeze_last_layer_epochs`` epochs. With ``layer_decay`` < 1 or ``patch_embed_lr_mult`` != 1 the
        student backbone's parameters get ``lr_scale = layer_decay ** (num_layers - layer_id) [* patch_embed_lr_mult]``
        (:meth:`SSLMethod.layer_decay_groups`; the backbone tells each parameter's layer); heads stay at scale 1."""
        cfg = self.cfg
        if cfg.layer_decay != 1.0 or cfg.patch_embed_lr_mult != 1.0:
            frozen = int(cfg.freeze_last_layer_epochs)
            return self.layer_decay_groups(
                weight_decay,
                self.student["backbone"],
                "student.backbone.",
                layer_decay=cfg.layer_decay,
                patch_embed_lr_mult=cfg.patch_embed_lr_mult,
                freeze_epochs=lambda name: frozen if f".{LAST_LAYER_NAME}." in f".{name}" else 0,
            )
        groups = self.decay_split_groups(weight_decay)
        last = [p for n, p in self.named_parameters() if p.requires_grad and f".{LAST_LAYER_NAME}." in f".{n}"]
        last_ids = {id(p) for p in last}
        for group in groups:
            group["params"] = [p for p in group["params"] if id(p) not in last_ids]
        groups.append(
            {"params": last, "weight_decay": weight_decay, "freeze_epochs": int(self.cfg.freeze_last_layer_epochs)}
        )
        return [g for g in groups if g["params"]]

    # ------------------------------------------------------------------ views
    def train_transform(self) -> Transform:
        cfg = self.cfg
        return MultiCropTransform(
            global_size=self.global_size,
            local_size=self.local_size,
            num_global=2,
            num_local=int(cfg.num_local_crops),
            global_scale=tuple(cfg.global_crop_scale),
            local_scale=tuple(cfg.local_crop_scale),
            intensity=dataclasses.replace(
                IntensityAugmentation() if cfg.intensity_augmentation else IntensityAugmentation.none(),
                p_gin=float(cfg.gin_p),
                gin_num_layers=int(cfg.gin_num_layers),
                gin_channels=int(cfg.gin_channels),
            ),
        )

    def val_transform(self) -> Transform:
        return self.train_transform()

    # ------------------------------------------------------------------ schedules
    def teacher_temperature(self) -> float:
        """Linear warm-up ``teacher_temp_start -> teacher_temp_end`` over the warm-up epochs, then constant."""
        cfg = self.cfg
        if self.steps_per_epoch is None or cfg.teacher_temp_warmup_epochs <= 0:
            return float(cfg.teacher_temp_end)
        epoch = int(self.step_count) / self.steps_per_epoch
        fraction = min(epoch / cfg.teacher_temp_warmup_epochs, 1.0)
        return float(cfg.teacher_temp_start + (cfg.teacher_temp_end - cfg.teacher_temp_start) * fraction)

    # ------------------------------------------------------------------ step
    def forward(self, batch: dict[str, torch.Tensor]) -> StepOutput:
        cfg = self.cfg
        glob = batch["global_views"]
        b, n_global = glob.shape[:2]
        globals_flat = glob.transpose(0, 1).reshape(n_global * b, *glob.shape[2:])
        locals_ = batch.get("local_views")
        n_local = 0 if locals_ is None else int(locals_.shape[1])
        temp = self.teacher_temperature()
        k = cfg.num_prototypes

        with torch.no_grad():
            t_features = self.teacher["backbone"].encode(globals_flat)
            t_cls = t_features.pooled()
            t_logits = self.teacher["dino_head"](self.cls_norm(t_cls)).float()
            t_probs = self.dino_targets.targets(t_logits, temp)

        net = self.student["backbone"]
        mask = None
        if self.use_ibot:
            grid = net.unit_grid(self.global_size, 1)
            counts = ibot_mask_counts(
                n_global * b, grid[0] * grid[1] * grid[2], cfg.ibot_mask_ratio, cfg.ibot_sample_probability, glob.device
            )
            mask = net.draw_mask(
                n_global * b,
                block_size=1,
                counts=counts,
                input_size=self.global_size,
                device=glob.device,
                mode=cfg.ibot_mask_mode,
            )
        s_features = net.encode(globals_flat, mask)
        s_cls_global = s_features.pooled()
        s_cls = [s_cls_global]
        if n_local:
            locals_flat = locals_.transpose(0, 1).reshape(n_local * b, *locals_.shape[2:])
            s_cls.append(net.encode(locals_flat).pooled())
        s_cls_all = torch.cat(s_cls, dim=0)
        s_logits = self.student["dino_head"](self.cls_norm(s_cls_all)).float()

        dino, _ = dino_cross_view_loss(list(s_logits.split(b)), list(t_probs.split(b)), cfg.student_temp)
        loss = dino
        metrics = {
            "dino_loss": float(dino.detach()),
            "ln_K": math.log(k),
            "teacher_entropy": teacher_entropy_ratio(t_probs),
            "effective_rank": effective_rank(s_cls_all),
            "teacher_logit_similarity": mean_pairwise_cosine(t_logits),
            "teacher_temp": temp,
        }

        koleo_terms = [koleo_loss(v) for v in s_cls_global.split(b)]
        koleo_terms = [t for t in koleo_terms if t is not None]
        if koleo_terms and cfg.koleo_weight > 0:
            koleo = torch.stack(koleo_terms).mean()
            loss = loss + cfg.koleo_weight * koleo
            metrics["koleo"] = float(koleo.detach())

        ibot_logits_t = None
        if self.use_ibot and mask is not None:
            # Every rank runs the same collectives (centre/Sinkhorn all-reduces), even with no masked token.
            with torch.no_grad():
                ibot_logits_t = self.teacher["ibot_head"](t_features.tokens()[mask.masked]).float()
                ibot_probs = self.ibot_targets.targets(ibot_logits_t, temp)
            s_patch = self.student["ibot_head"](s_features.tokens()[mask.masked]).float()
            ibot = ibot_masked_loss(s_patch, ibot_probs, mask.masked, cfg.student_temp) + 0.0 * s_patch.sum()
            loss = loss + cfg.ibot_weight * ibot
            metrics["ibot"] = float(ibot.detach())
            metrics["ibot_masked_fraction"] = float(mask.masked.float().mean())
            if ibot_probs.shape[0]:
                metrics["ibot_teacher_entropy"] = teacher_entropy_ratio(ibot_probs)

        if self.training:
            if isinstance(self.cls_norm, RunningStandardization):
                self.cls_norm.update(t_cls)
            self.dino_targets.update(t_logits)
            if ibot_logits_t is not None:
                self.ibot_targets.update(ibot_logits_t)
        return StepOutput(loss=loss, metrics=metrics)
