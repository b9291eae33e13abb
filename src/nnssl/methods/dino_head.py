"""DINO projection head: 3-layer MLP, L2-normalised bottleneck, weight-normalised prototype layer.

Caron et al. 2021 (DINO) / Oquab et al. 2024 (DINOv2): ``h(x) = W_last norm(MLP_3(x))`` with
``MLP_3 = Linear(d, 2048) GELU Linear(2048, 2048) GELU Linear(2048, 256)``, ``norm(z) = z / max(||z||, 1e-6)``
(eps 1e-6 instead of 1e-12, which underflows in fp16: AIM's ``DINOProjectionHeadFP16Safe``) and a
weight-normalised ``W_last`` (K x 256) whose norm g is fixed to 1 ("norm_last_layer"): every prototype row
is used as ``v_k / ||v_k||``, so the logits are cosine similarities in [-1, 1]. The raw rows ``v`` are the
parameter ``last_layer.weight`` (the name the engine's last-layer freeze looks for).

:class:`RunningStandardization` is the input normalisation of the head on ResEnc backbones (documentation/dino.md,
"Why ResEnc collapsed"): ``x -> (x - mu) / sqrt(var + eps)`` per dimension with running statistics (no batch
statistics in the forward pass, no learned parameters), the same for student and teacher.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nnssl.losses.dino import _world_all_reduce

#: Parameter-name prefix of the prototype layer inside a :class:`DINOHead`.
LAST_LAYER_NAME = "last_layer"


class NormalizedPrototypes(nn.Module):
    """``x -> x @ (v / ||v||_row)^T``: weight normalisation with the gain fixed to 1 (no bias)."""

    def __init__(self, in_dim: int, num_prototypes: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_prototypes, in_dim))
        nn.init.trunc_normal_(self.weight, std=0.02)

    def normalized_weight(self) -> torch.Tensor:
        return F.normalize(self.weight, dim=1, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.normalized_weight().to(x.dtype))


class RunningStandardization(nn.Module):
    """Per-dimension standardisation with running statistics: ``y = (x - mu) / sqrt(var + eps)``.

    ``mu``/``var`` are buffers updated by :meth:`update` (after the loss, in training only) as
    ``s <- m s + (1 - m) s_batch`` with the batch statistics over all rows of all ranks; the momentum is
    ``min(m, n / (n + 1))`` for the ``n``-th update, so the first update sets them to the first batch's statistics
    (cumulative average until ``n / (n + 1)`` exceeds ``m``). The forward pass never uses batch statistics, so
    every sample is normalised independently of its batch and student and teacher apply the same map. Updates
    with a non-finite batch statistic or fewer than 2 rows are refused.
    """

    def __init__(self, dim: int, momentum: float = 0.9, eps: float = 1e-6) -> None:
        super().__init__()
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"RunningStandardization momentum must be in [0, 1), got {momentum}.")
        self.momentum = float(momentum)
        self.eps = float(eps)
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("var", torch.ones(dim))
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean.to(x.dtype)) * torch.rsqrt(self.var + self.eps).to(x.dtype)

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> bool:
        """Fold the (n, dim) rows of ``x`` (all ranks) into the running statistics; returns whether they moved."""
        flat = x.detach().double().reshape(-1, x.shape[-1])  # float64: the sum of squares cancels badly in fp32
        stats = torch.cat([flat.sum(dim=0), (flat * flat).sum(dim=0), flat.new_tensor([float(flat.shape[0])])])
        _world_all_reduce(stats)
        count = float(stats[-1])
        if count < 2:
            return False
        dim = flat.shape[-1]
        mean = stats[:dim] / count
        var = (stats[dim : 2 * dim] / count - mean * mean).clamp_min(0.0) * (count / (count - 1))
        if not (bool(torch.isfinite(mean).all()) and bool(torch.isfinite(var).all())):
            return False
        n = int(self.num_updates)
        momentum = min(self.momentum, n / (n + 1))
        self.mean.mul_(momentum).add_(mean.to(self.mean.dtype), alpha=1.0 - momentum)
        self.var.mul_(momentum).add_(var.to(self.var.dtype), alpha=1.0 - momentum)
        self.num_updates += 1
        return True


class DINOHead(nn.Module):
    """(..., in_dim) features -> (..., num_prototypes) logits; :meth:`bottleneck` gives the normalised 256-d code."""

    def __init__(
        self,
        in_dim: int,
        num_prototypes: int,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        num_layers: int = 3,
    ) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"DINOHead needs at least one layer, got num_layers={num_layers}.")
        layers: list[nn.Module] = []
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [bottleneck_dim]
        for i in range(num_layers):
            layers.append(nn.Linear(dims[i], dims[i + 1]))
            if i < num_layers - 1:
                layers.append(nn.GELU())
        self.mlp = nn.Sequential(*layers)
        self.last_layer = NormalizedPrototypes(bottleneck_dim, num_prototypes)
        for module in self.mlp.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)

    def bottleneck(self, x: torch.Tensor) -> torch.Tensor:
        """The L2-normalised bottleneck vector (eps 1e-6)."""
        return F.normalize(self.mlp(x), dim=-1, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last_layer(self.bottleneck(x))
