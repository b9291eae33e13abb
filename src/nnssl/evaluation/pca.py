"""One PCA basis shared by a set of feature maps (for display, registration and compact storage).

Fitted on the voxels of every map together (at most ``max_samples`` of them, drawn with a fixed seed, the same number
from each map), so that channel ``k`` means the same thing in every image (registration compares fixed and moving
features channel by channel; DINOv2's PCA visualisations fit one basis over the images they show). The basis is the
top-``k`` right singular vectors of the centred samples (``torch.linalg.svd``); each component's sign is fixed so
that its largest-magnitude loading is positive, which makes the projection of the same input the same, run after run.

``transform(map) = V_k^T (f - mu)`` per voxel; ``explained_variance_ratio`` is each component's share of the total
variance of the samples.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass
class SharedPCA:
    """``mean`` (C,), ``components`` (k, C) with orthonormal rows, ``explained_variance_ratio`` (k,)."""

    mean: torch.Tensor
    components: torch.Tensor
    explained_variance_ratio: torch.Tensor

    @classmethod
    def fit(cls, maps: Sequence[torch.Tensor], k: int = 8, max_samples: int = 200_000, seed: int = 0) -> SharedPCA:
        """Fit on ``maps`` (each (C, ...) with the same C); ``k`` <= C."""
        if not maps:
            raise ValueError("SharedPCA.fit needs at least one feature map")
        channels = {int(m.shape[0]) for m in maps}
        if len(channels) != 1:
            raise ValueError(f"all maps must have the same number of channels, got {sorted(channels)}")
        (c,) = channels
        if not 1 <= k <= c:
            raise ValueError(f"k must lie in 1..{c} (the maps' channels), got {k}")
        generator = torch.Generator().manual_seed(int(seed))
        per_map = max(1, max_samples // len(maps))
        rows = []
        for m in maps:
            flat = m.reshape(c, -1).T.float()
            if flat.shape[0] > per_map:
                flat = flat[torch.randperm(flat.shape[0], generator=generator)[:per_map]]
            rows.append(flat)
        samples = torch.cat(rows).double()
        mean = samples.mean(0)
        centred = samples - mean
        _, singular, vh = torch.linalg.svd(centred, full_matrices=False)
        components = vh[:k]
        signs = torch.sign(components.gather(1, components.abs().argmax(1, keepdim=True)))
        components = components * torch.where(signs == 0, torch.ones_like(signs), signs)
        variance = singular**2
        ratio = variance[:k] / variance.sum().clamp_min(1e-30)
        return cls(mean=mean.float(), components=components.float(), explained_variance_ratio=ratio.float())

    def transform(self, feature_map: torch.Tensor) -> torch.Tensor:
        """(k, ...) projection of a (C, ...) map onto the basis."""
        c = feature_map.shape[0]
        flat = feature_map.reshape(c, -1).float() - self.mean[:, None]
        return (self.components @ flat).reshape(self.components.shape[0], *feature_map.shape[1:])


__all__ = ["SharedPCA"]
