"""DINO projection head: 3-layer MLP, L2-normalised bottleneck, weight-normalised prototype layer.

Caron et al. 2021 (DINO) / Oquab et al. 2024 (DINOv2): ``h(x) = W_last norm(MLP_3(x))`` with
``MLP_3 = Linear(d, 2048) GELU Linear(2048, 2048) GELU Linear(2048, 256)``, ``norm(z) = z / max(||z||, 1e-6)``
(eps 1e-6 instead of 1e-12, which underflows in fp16: AIM's ``DINOProjectionHeadFP16Safe``) and a
weight-normalised ``W_last`` (K x 256) whose norm g is fixed to 1 ("norm_last_layer"): every prototype row
is used as ``v_k / ||v_k||``, so the logits are cosine similarities in [-1, 1]. The raw rows ``v`` are the
parameter ``last_layer.weight`` (the name the engine's last-layer freeze looks for).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

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
