"""Shared PCA and the probes, on inputs whose answers are known."""

from __future__ import annotations

import math

import numpy as np
import torch

from nnssl.evaluation.pca import SharedPCA
from nnssl.evaluation.probes import (
    dense_probe,
    dice_per_label,
    fit_logistic_regression,
    knn_classification,
    linear_classification,
    voxel_features,
)


def test_same_volume_twice_gives_identical_maps_and_one_basis():
    torch.manual_seed(0)
    a = torch.randn(16, 6, 7, 8)
    pca = SharedPCA.fit([a, a.clone()], k=4)
    first, second = pca.transform(a), pca.transform(a.clone())
    assert torch.equal(first, second)
    again = SharedPCA.fit([a, a.clone()], k=4)
    assert torch.equal(again.components, pca.components)  # deterministic, signs fixed
    assert torch.allclose(pca.components @ pca.components.T, torch.eye(4), atol=1e-5)


def test_pca_finds_a_known_low_rank_structure():
    torch.manual_seed(0)
    basis = torch.linalg.qr(torch.randn(10, 2))[0]  # 2 orthonormal directions in 10 channels
    codes = torch.randn(2, 5000) * torch.tensor([[3.0], [1.0]])
    maps = [(basis @ codes[:, :2500]).reshape(10, 10, 10, 25), (basis @ codes[:, 2500:]).reshape(10, 10, 10, 25)]
    pca = SharedPCA.fit(maps, k=3)
    assert float(pca.explained_variance_ratio[:2].sum()) > 0.999
    assert abs(float(pca.explained_variance_ratio[0]) - 0.9) < 0.02  # 9 : 1 variance
    assert torch.allclose((pca.components[:2] @ basis).norm(dim=1), torch.ones(2), atol=1e-4)  # in the span


def test_dice_closed_form():
    prediction = np.array([1, 1, 0, 2, 2, 2])
    reference = np.array([1, 0, 0, 2, 2, 0])
    scores = dice_per_label(prediction, reference, [1, 2, 3])
    assert scores[1] == 2 * 1 / 3 and scores[2] == 2 * 2 / 5 and math.isnan(scores[3])


def test_voxel_features_interpolate_cell_centres():
    dense = torch.arange(4.0).view(1, 1, 1, 4).expand(1, 1, 1, 4).reshape(1, 1, 1, 4)
    voxels = torch.tensor([[0, 0, 1], [0, 0, 2], [0, 0, 3], [0, 0, 4]])  # stride 2: cells centred at 0.5, 2.5, ...
    values = voxel_features(dense, 2, voxels)[:, 0]
    assert torch.allclose(values, torch.tensor([0.25, 0.75, 1.25, 1.75]))


def test_dense_probe_learns_labels_that_are_a_linear_function_of_the_features():
    torch.manual_seed(0)
    features = [torch.randn(6, 20, 20, 20) for _ in range(3)]
    direction = torch.randn(3, 6)

    def labels_of(f):
        return (torch.einsum("kc,cxyz->kxyz", direction, f)).argmax(0).numpy().astype(np.int16)

    train = [(f, 1, labels_of(f)) for f in features[:2]]
    test = [("held_out", features[2], 1, labels_of(features[2]))]
    result, _ = dense_probe(train, test, num_classes=3, max_voxels=12_000)
    assert result.mean_dice > 0.95
    assert set(result.per_label) == {1, 2}


def test_dense_probe_on_coarse_features_uses_their_geometry():
    """Labels constant on 4^3 blocks, features on the block grid: the probe recovers the blocks."""
    torch.manual_seed(1)
    grid = torch.randint(0, 2, (6, 6, 6))
    one_hot = torch.stack([grid == 0, grid == 1]).float() + 0.05 * torch.randn(2, 6, 6, 6)
    labels = grid.repeat_interleave(4, 0).repeat_interleave(4, 1).repeat_interleave(4, 2).numpy()
    result, _ = dense_probe([(one_hot, 4, labels)], [("same", one_hot, 4, labels)], num_classes=2)
    assert result.per_label[1] > 0.8


def test_knn_and_linear_probes_are_exact_on_separable_embeddings():
    torch.manual_seed(0)
    centres = torch.eye(3, 16) * 5
    train_y = torch.arange(3).repeat(10)
    test_y = torch.arange(3).repeat(4)
    train_x = centres[train_y] + 0.3 * torch.randn(30, 16)
    test_x = centres[test_y] + 0.3 * torch.randn(12, 16)
    assert torch.equal(knn_classification(train_x, train_y, test_x, 3, k=5), test_y)
    assert torch.equal(linear_classification(train_x, train_y, test_x, 3), test_y)


def test_logistic_regression_is_calibrated_on_a_one_dimensional_problem():
    x = torch.linspace(-3, 3, 601)[:, None]
    y = (x[:, 0] > 0).long()
    probe = fit_logistic_regression(x, y, 2, l2=0.0)
    p = torch.softmax(probe.logits(torch.tensor([[-1.0], [1.0]])), 1)
    assert p[0, 0] > 0.9 and p[1, 1] > 0.9
