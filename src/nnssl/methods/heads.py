"""MLP heads shared by the contrastive and teacher-student methods (methods.md 1.4, 4.5, 4.8).

:class:`ProjectionHead`: ``num_layers`` Linear layers ``in -> hidden -> ... -> out``; every layer but the last
is followed by a normalisation and an activation, the last by a normalisation only when ``last_norm``.
Normalisations:

* ``"batch_no_stats"``: :class:`GlobalBatchNorm1d` without affine parameters or running statistics: always batch
  statistics, in train and eval mode, so an EMA teacher in eval mode normalises exactly like the student (CVA's
  ResEnc head; avoids the frozen running-statistics pitfall of methods.md 1.7 item 4);
* ``"batch"``: :class:`GlobalBatchNorm1d` with affine parameters and running statistics (a standard BatchNorm1d);
* ``"feature"``: per-vector normalisation, i.e. ``InstanceNorm1d`` applied to an (N, C) tensor as upstream's
  VoCo/SimCLR head does: each row is shifted to mean 0 and scaled to variance 1 over its C features
  (no affine parameters, eps 1e-5). It does not mix samples, so it needs no batch;
* ``None``: no normalisation.

Linear weights are truncated-normal (std 0.02, cut at +-2 std), biases 0 (CVA/DINO heads).
:class:`PredictorHead` is BYOL's predictor: Linear, BatchNorm1d (global, affine, running statistics), SiLU, Linear.

Batch statistics are global: under torch.distributed every :class:`GlobalBatchNorm1d` computes them over the rows of
all processes (upstream converts its heads to ``SyncBatchNorm``, which torch supports on GPUs only and never
synchronises in eval mode, i.e. not for EMA teachers). With one row per image and one image per GPU a per-GPU
statistic would make the two rows of a pair exact opposites after normalisation.
Inputs may have any leading shape (..., in_dim); they are flattened to rows for the normalisation.

Global pooling of backbone features (:func:`make_global_pool`): ``"mean"`` is
:meth:`nnssl.backbones.Features.pooled` (the mean of every map, concatenated); ``"attention"`` weighs the dense
positions (:meth:`~nnssl.backbones.Features.tokens`) by ``softmax_n(w . f_n + b)`` and sums them, in fp32 (CVA's
Primus head).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from nnssl.backbones import Features

NORMS = ("batch_no_stats", "batch", "feature", None)
GLOBAL_POOLS = ("mean", "attention")
ACTIVATIONS = {"silu": nn.SiLU, "relu": nn.ReLU, "gelu": nn.GELU}


def _process_group_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class GlobalBatchNorm1d(nn.BatchNorm1d):
    """``BatchNorm1d`` whose batch statistics cover the rows of every process.

    ``y = (x - mu) / sqrt(var + eps) [* gamma + beta]`` with ``mu``, ``var`` (biased) over all rows of all ranks,
    computed in fp32 with two differentiable all-reduces (``torch.distributed.nn``), so gradients flow through the
    statistics to every rank. Batch statistics are used in training and, without running statistics, in eval mode;
    running statistics (when tracked) are updated with the global ``mu`` and unbiased variance. In one process it
    is exactly ``BatchNorm1d``. Every rank must call it the same number of times (as any collective).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch_statistics = self.training or not self.track_running_stats
        if not batch_statistics or _process_group_size() == 1:
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        xf = x.float()
        totals = all_reduce(torch.cat([xf.sum(dim=0), xf.new_tensor([float(xf.shape[0])])]))
        count = totals[-1]
        mean = totals[:-1] / count
        var = all_reduce(((xf - mean) ** 2).sum(dim=0)) / count
        if self.training and self.track_running_stats:
            with torch.no_grad():
                n = float(count)
                momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked + 1)
                unbiased = var.detach() * (n / max(n - 1.0, 1.0))
                self.running_mean.mul_(1 - momentum).add_(mean.detach().to(self.running_mean.dtype), alpha=momentum)
                self.running_var.mul_(1 - momentum).add_(unbiased.to(self.running_var.dtype), alpha=momentum)
                self.num_batches_tracked += 1
        y = (xf - mean) * torch.rsqrt(var + self.eps)
        if self.affine:
            y = y * self.weight.float() + self.bias.float()
        return y.to(x.dtype)


class FeatureNorm(nn.Module):
    """Per-row standardisation of an (N, C) tensor: ``(x - mean_C(x)) / sqrt(var_C(x) + eps)`` (biased var)."""

    def __init__(self, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=-1, keepdim=True)
        var = x.var(dim=-1, unbiased=False, keepdim=True)
        return (x - mean) * torch.rsqrt(var + self.eps)


def make_norm(kind: str | None, dim: int) -> nn.Module:
    """The normalisation layer named ``kind`` (see the module docstring) for ``dim`` features."""
    if kind == "batch_no_stats":
        return GlobalBatchNorm1d(dim, affine=False, track_running_stats=False)
    if kind == "batch":
        return GlobalBatchNorm1d(dim)
    if kind == "feature":
        return FeatureNorm()
    if kind is None or kind == "none":
        return nn.Identity()
    raise ValueError(f"Unknown head normalisation '{kind}'; use one of {NORMS}.")


def init_linear_(module: nn.Module) -> None:
    """Truncated-normal (std 0.02) weights and zero biases for every Linear inside ``module``."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02, a=-0.04, b=0.04)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class _RowMLP(nn.Module):
    """Applies ``self.layers`` to (..., C) inputs by flattening the leading axes into rows."""

    layers: nn.Sequential

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        out = self.layers(x.reshape(-1, x.shape[-1]))
        return out.reshape(*lead, out.shape[-1])


class ProjectionHead(_RowMLP):
    """``num_layers`` x (Linear [+ norm + act]); the last Linear is followed by a norm iff ``last_norm``."""

    def __init__(
        self,
        in_dim: int,
        hidden_dim: int,
        out_dim: int,
        num_layers: int = 3,
        norm: str | None = "batch_no_stats",
        act: str = "silu",
        last_norm: bool = True,
    ) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"ProjectionHead needs at least one layer, got num_layers={num_layers}.")
        if act not in ACTIVATIONS:
            raise ValueError(f"Unknown head activation '{act}'; use one of {sorted(ACTIVATIONS)}.")
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
        layers: list[nn.Module] = []
        for i in range(num_layers):
            layers.append(nn.Linear(dims[i], dims[i + 1]))
            last = i == num_layers - 1
            if not last or last_norm:
                layers.append(make_norm(norm, dims[i + 1]))
            if not last:
                layers.append(ACTIVATIONS[act]())
        self.layers = nn.Sequential(*layers)
        self.out_dim = out_dim
        init_linear_(self)


class PredictorHead(_RowMLP):
    """BYOL/CVA predictor: Linear(in, hidden), BatchNorm1d(hidden), SiLU, Linear(hidden, out)."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(in_dim, hidden_dim), GlobalBatchNorm1d(hidden_dim), nn.SiLU(), nn.Linear(hidden_dim, out_dim)
        )
        self.out_dim = out_dim
        init_linear_(self)


class MeanPool(nn.Module):
    """``Features -> (B, C)``: the mean of every feature map, concatenated."""

    def forward(self, features: Features) -> torch.Tensor:
        return features.pooled()


class AttentionPool(nn.Module):
    """``Features -> (B, C)``: ``sum_n softmax_n(score(f_n)) f_n`` over the dense positions, in fp32."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.score = nn.Linear(dim, 1)

    def forward(self, features: Features) -> torch.Tensor:
        tokens = features.tokens()
        weights = torch.softmax(self.score(tokens).float(), dim=1)
        return (weights * tokens.float()).sum(dim=1)


def make_global_pool(kind: str, dim: int) -> nn.Module:
    """The global pooling named ``kind`` (``"mean"`` or ``"attention"``) for ``dim``-channel features."""
    if kind == "mean":
        return MeanPool()
    if kind == "attention":
        return AttentionPool(dim)
    raise ValueError(f"Unknown global pooling '{kind}'; use one of {GLOBAL_POOLS}.")
