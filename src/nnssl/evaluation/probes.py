"""Probes on frozen features: a dense linear segmentation probe and linear / kNN classification.

Dense probe (3DINO, DINOv2 practice, ../shared/reference/downstream.md): a per-voxel multinomial logistic regression
``p(y | f) = softmax(W f + b)`` on the features ``f`` at voxel resolution. Features live on a grid of stride ``s``;
the feature of voxel ``v`` is the trilinear interpolation of the grid at ``(v + 0.5) / s - 0.5`` (cell centres,
``align_corners=False``). Training samples voxels of the labelled training images (the same number per class where
a class has enough voxels, :func:`sample_voxels`), standardises the features with the training samples' mean and
standard deviation, and minimises the mean cross-entropy plus ``l2 * |W|^2`` with full-batch L-BFGS. Prediction is
linear, so the logits are computed on the feature grid and then trilinearly upsampled to the voxels (the same as
upsampling the features first, without their memory); Dice per label ``2 |P & G| / (|P| + |G|)`` compares the argmax
with the label map on the preprocessed grid (NaN where a label is absent from both).

Classification on global embeddings: the same logistic regression (linear probe) and a weighted kNN
(k = 20, cosine similarity, votes ``exp(sim / T)`` with ``T = 0.07``, DINO's kNN evaluation).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)


@dataclass
class LinearProbe:
    """A fitted ``softmax(W (f - mu) / sigma + b)``: ``weight`` (K, C), ``bias`` (K,), ``mean``/``std`` (C,)."""

    weight: torch.Tensor
    bias: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """(N, K) logits of (N, C) feature rows."""
        return ((features - self.mean) / self.std) @ self.weight.T + self.bias

    def logits_map(self, dense: torch.Tensor) -> torch.Tensor:
        """(K, *grid) logits of a (C, *grid) feature map."""
        c = dense.shape[0]
        rows = dense.reshape(c, -1).T
        return self.logits(rows).T.reshape(self.weight.shape[0], *dense.shape[1:])


def fit_logistic_regression(
    features: torch.Tensor,
    targets: torch.Tensor,
    num_classes: int,
    l2: float = 1e-4,
    max_iter: int = 100,
) -> LinearProbe:
    """Multinomial logistic regression on (N, C) features and (N,) integer targets (full-batch L-BFGS, float32)."""
    if features.ndim != 2 or features.shape[0] != targets.shape[0] or features.shape[0] == 0:
        raise ValueError(
            f"features (N, C) and targets (N,) must match and be non-empty: {features.shape}, {targets.shape}"
        )
    x = features.float()
    mean = x.mean(0)
    std = x.std(0, unbiased=False).clamp_min(1e-6)
    z = (x - mean) / std
    y = targets.long()
    weight = torch.zeros(num_classes, x.shape[1], requires_grad=True)
    bias = torch.zeros(num_classes, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [weight, bias], lr=1.0, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe"
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(z @ weight.T + bias, y) + l2 * (weight**2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return LinearProbe(weight=weight.detach(), bias=bias.detach(), mean=mean, std=std)


def voxel_features(dense: torch.Tensor, stride: int, voxels: torch.Tensor) -> torch.Tensor:
    """(N, C) features at integer voxel positions (N, 3) of a (C, *grid) map with ``stride`` (trilinear)."""
    grid = torch.tensor(dense.shape[1:], dtype=torch.float32)
    cells = (voxels.float() + 0.5) / stride - 0.5
    normalised = (cells + 0.5) / grid * 2 - 1  # align_corners=False convention
    sample = normalised.flip(-1).view(1, -1, 1, 1, 3)  # grid_sample wants (x=W, y=H, z=D) = (axis 2, 1, 0)
    out = F.grid_sample(dense[None].float(), sample, mode="bilinear", padding_mode="border", align_corners=False)
    return out.view(dense.shape[0], -1).T


def sample_voxels(label: np.ndarray, num_classes: int, max_voxels: int, generator: torch.Generator) -> torch.Tensor:
    """(N, 3) voxel positions: up to ``max_voxels // num_classes`` of every class present (all of a rarer class),
    so that small structures weigh as much as the background."""
    flat = torch.as_tensor(np.asarray(label)).reshape(-1).long()
    per_class = max(1, max_voxels // max(1, num_classes))
    picked = []
    for value in range(num_classes):
        where = torch.nonzero(flat == value).view(-1)
        if where.numel() == 0:
            continue
        if where.numel() > per_class:
            where = where[torch.randperm(where.numel(), generator=generator)[:per_class]]
        picked.append(where)
    if not picked:
        raise ValueError("the label map holds none of the probe's classes")
    index = torch.cat(picked)
    shape = label.shape
    return torch.stack([index // (shape[1] * shape[2]), (index // shape[2]) % shape[1], index % shape[2]], dim=1)


def predict_labels(probe: LinearProbe, dense: torch.Tensor, stride: int, shape: Sequence[int]) -> np.ndarray:
    """Argmax label per voxel of a grid of ``shape`` from a (C, *grid) map of ``stride``."""
    logits = probe.logits_map(dense.float())
    if stride > 1:
        size = tuple(int(g) * stride for g in logits.shape[1:])
        logits = F.interpolate(logits[None], size=size, mode="trilinear", align_corners=False)[0]
    logits = logits[:, : shape[0], : shape[1], : shape[2]]
    return logits.argmax(0).to(torch.int16).numpy()


def dice_per_label(prediction: np.ndarray, reference: np.ndarray, labels: Sequence[int]) -> dict[int, float]:
    """Dice of every label value (NaN where absent from both)."""
    out = {}
    for value in labels:
        p = prediction == value
        g = reference == value
        denominator = int(p.sum()) + int(g.sum())
        out[int(value)] = float("nan") if denominator == 0 else 2.0 * float(np.logical_and(p, g).sum()) / denominator
    return out


@dataclass
class DenseProbeResult:
    """Dice per test case and label value, their mean per label, and the mean over labels (``mean_dice``)."""

    per_case: dict[str, dict[int, float]]
    per_label: dict[int, float]
    mean_dice: float
    train_voxels: int
    extra: dict[str, float] = field(default_factory=dict)


def nanmean(values: Sequence[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(sum(finite) / len(finite)) if finite else float("nan")


def dense_probe(
    train: Sequence[tuple[torch.Tensor, int, np.ndarray]],
    test: Sequence[tuple[str, torch.Tensor, int, np.ndarray]],
    num_classes: int,
    max_voxels: int = 50_000,
    l2: float = 1e-4,
    seed: int = 0,
) -> tuple[DenseProbeResult, LinearProbe]:
    """Fit the dense probe on ``train`` ``(dense, stride, label)`` and score it on ``test`` ``(name, dense, stride,
    label)``; labels are int maps on the voxel grid whose features ``dense`` describes."""
    generator = torch.Generator().manual_seed(int(seed))
    rows, targets = [], []
    per_image = max(num_classes, max_voxels // max(1, len(train)))
    for dense, stride, label in train:
        voxels = sample_voxels(label, num_classes, per_image, generator)
        rows.append(voxel_features(dense, stride, voxels))
        targets.append(torch.as_tensor(np.asarray(label))[voxels[:, 0], voxels[:, 1], voxels[:, 2]].long())
    features, target = torch.cat(rows), torch.cat(targets)
    probe = fit_logistic_regression(features, target, num_classes, l2=l2)
    values = list(range(1, num_classes))
    per_case = {}
    for name, dense, stride, label in test:
        prediction = predict_labels(probe, dense, stride, label.shape)
        per_case[name] = dice_per_label(prediction, np.asarray(label), values)
    per_label = {v: nanmean([scores[v] for scores in per_case.values()]) for v in values}
    result = DenseProbeResult(
        per_case=per_case,
        per_label=per_label,
        mean_dice=nanmean(list(per_label.values())),
        train_voxels=int(features.shape[0]),
    )
    return result, probe


def linear_classification(
    train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, num_classes: int, l2: float = 1e-4
) -> torch.Tensor:
    """Predicted class of every test embedding by a logistic-regression probe fitted on the training embeddings."""
    probe = fit_logistic_regression(train_x, train_y, num_classes, l2=l2)
    return probe.logits(test_x.float()).argmax(1)


def knn_classification(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
) -> torch.Tensor:
    """Weighted kNN: the ``k`` most cosine-similar training embeddings vote ``exp(sim / temperature)`` each."""
    a = F.normalize(test_x.float(), dim=1)
    b = F.normalize(train_x.float(), dim=1)
    similarity = a @ b.T
    k = min(k, b.shape[0])
    top, index = similarity.topk(k, dim=1)
    votes = torch.zeros(a.shape[0], num_classes)
    votes.scatter_add_(1, train_y.long()[index], torch.exp(top / temperature))
    return votes.argmax(1)


__all__ = [
    "DenseProbeResult",
    "LinearProbe",
    "dense_probe",
    "dice_per_label",
    "fit_logistic_regression",
    "knn_classification",
    "linear_classification",
    "predict_labels",
    "sample_voxels",
    "voxel_features",
]
