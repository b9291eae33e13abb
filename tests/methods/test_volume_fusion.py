"""VolumeFusion: the fused image follows its label map voxel by voxel, box counts and sides, and the Dice + CE loss
against closed forms (methods.md 4.6 and 7 item 7)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from nnssl.architectures import ARCHITECTURES
from nnssl.architectures.adaptation_plan import build_adaptation_plan, verify_adaptation_plan
from nnssl.losses.volume_fusion import dice_ce_loss, soft_dice
from nnssl.methods.volume_fusion import FusionLabels, VolumeFusion, VolumeFusionConfig, draw_fusion_labels, fuse

SHAPE = (40, 48, 32)


@pytest.mark.parametrize("seed", range(3))
def test_fused_image_is_alpha_a_plus_one_minus_alpha_b_with_the_label_maps_alpha(seed: int) -> None:
    np.random.seed(seed)
    labels, _, _ = draw_fusion_labels(SHAPE, VolumeFusionConfig())
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(1, *SHAPE)).astype(np.float32)
    b = rng.normal(size=(1, *SHAPE)).astype(np.float32)
    fused = fuse(torch.from_numpy(a)[None], torch.from_numpy(b)[None], torch.from_numpy(labels)[None], 5)[0].numpy()
    alpha = labels.astype(np.float64) / 4.0
    np.testing.assert_allclose(fused, alpha * a + (1 - alpha) * b, rtol=0, atol=1e-6)
    for k in range(5):
        inside = labels == k
        assert inside.any()
        np.testing.assert_allclose(fused[inside], (k / 4) * a[inside] + (1 - k / 4) * b[inside], atol=1e-6)
    np.testing.assert_array_equal(fused[labels == 0], b[labels == 0])  # alpha 0: exactly the background
    np.testing.assert_array_equal(fused[labels == 4], a[labels == 4])  # alpha 1: exactly the foreground


def test_box_count_sides_and_overwriting() -> None:
    cfg = VolumeFusionConfig()
    counts = []
    for seed in range(300):
        np.random.seed(seed)
        labels, boxes, classes = draw_fusion_labels(SHAPE, cfg)
        counts.append(len(boxes))
        for box in boxes:
            for s, d in zip(box, SHAPE):
                assert 8 <= s.stop - s.start <= int(0.625 * d) and s.start >= 0 and s.stop <= d
        if seed < 5:  # replaying the boxes in order gives the map: later boxes overwrite earlier ones, 0 outside
            replay = np.zeros_like(labels)
            for box, k in zip(boxes, classes):
                replay[(slice(None), *box)] = k
            np.testing.assert_array_equal(labels, replay)
    assert min(counts) >= 10 and max(counts) <= 39
    assert min(counts) <= 12 and max(counts) >= 37  # the whole range is drawn


def test_transform_returns_a_label_map_and_leaves_the_image_alone_without_augmentation() -> None:
    x = np.random.default_rng(0).normal(size=(1, *SHAPE)).astype(np.float32)
    np.random.seed(0)
    out = FusionLabels(VolumeFusionConfig(), augment=False)({"image": x})
    np.testing.assert_array_equal(out["image"], x)
    assert out["fusion_labels"].shape == (1, *SHAPE) and out["fusion_labels"].dtype == np.int8
    assert set(np.unique(out["fusion_labels"])) <= set(range(5))


def test_perfect_prediction_scores_zero() -> None:
    labels = torch.from_numpy(np.stack([draw_fusion_labels((12, 12, 12), VolumeFusionConfig(min_box_side=2))[0][0]]))
    logits = torch.nn.functional.one_hot(labels.long(), 5).movedim(-1, 1).float() * 200.0
    loss, dice, ce = dice_ce_loss(logits, labels)
    assert float(loss) == pytest.approx(0.0, abs=1e-6) and float(dice) == pytest.approx(0.0, abs=1e-6)


def test_uniform_prediction_equals_its_closed_form() -> None:
    """p = 1/K everywhere: CE = ln K; per sample and class D = (2 n/K + s) / (N/K + n + s), n its voxel count."""
    np.random.seed(1)
    labels = torch.from_numpy(
        np.stack([draw_fusion_labels((16, 16, 16), VolumeFusionConfig())[0][0] for _ in range(2)])
    )
    k, s, n_vox = 5, 1e-5, 16**3
    loss, dice, ce = dice_ce_loss(torch.zeros(2, k, 16, 16, 16), labels, smooth=s)
    expected = []
    for b in range(2):
        for c in range(k):
            n = float((labels[b] == c).sum())
            expected.append((2 * n / k + s) / (n_vox / k + n + s))
    assert float(ce) == pytest.approx(math.log(k), rel=1e-6)
    assert float(dice) == pytest.approx(1.0 - np.mean(expected), rel=1e-5)
    assert float(loss) == pytest.approx(math.log(k) + 1.0 - np.mean(expected), rel=1e-5)


def test_soft_dice_of_an_absent_class_avoided_by_the_prediction_is_one() -> None:
    probabilities = torch.zeros(1, 2, 4, 4, 4)
    probabilities[:, 0] = 1.0
    dice = soft_dice(probabilities, torch.zeros(1, 4, 4, 4, dtype=torch.long))
    torch.testing.assert_close(dice, torch.ones(1, 2))


def _method(arch: str = "ResEncTiny", **cfg) -> VolumeFusion:
    torch.manual_seed(0)
    return VolumeFusion(VolumeFusionConfig(min_box_side=4, **cfg), ARCHITECTURES.get(arch), (16, 16, 16))


def test_forward_fuses_each_image_with_the_next_and_predicts_its_classes() -> None:
    method = _method()
    image = torch.randn(3, 1, 16, 16, 16)
    labels = torch.randint(0, 5, (3, 1, 16, 16, 16), dtype=torch.int8)
    fused, target = method.fused_input({"image": image, "fusion_labels": labels})
    alpha = labels.float() / 4
    for i in range(3):
        torch.testing.assert_close(fused[i], alpha[i] * image[i] + (1 - alpha[i]) * image[(i + 1) % 3])
    torch.testing.assert_close(target, labels[:, 0].long())
    alone, _ = method.fused_input({"image": image[:1], "fusion_labels": labels[:1]})
    torch.testing.assert_close(alone[0], alpha[0] * image[0] + (1 - alpha[0]) * image[0].flip(1, 2, 3))
    with torch.no_grad():
        logits = method.net.reconstruct(fused).prediction
        assert logits.shape == (3, 5, 16, 16, 16)
        torch.testing.assert_close(
            method({"image": image, "fusion_labels": labels}).loss, dice_ce_loss(logits, target)[0]
        )


@pytest.mark.parametrize("arch", ["ResEncTiny", "PrimusTiny"])
def test_backbone_with_five_class_head_loads_into_a_fresh_downstream_network(arch: str) -> None:
    method = _method(arch)
    spec = ARCHITECTURES.get(arch)
    state = method.backbone().state_dict()
    spec.build(1, 5, (16, 16, 16)).load_state_dict(state, strict=True)
    plans = {"configurations": {"c": {"spacing": [1.0] * 3, "patch_size": [16] * 3}}}
    verify_adaptation_plan(build_adaptation_plan(spec, plans, "c", (16, 16, 16), 1), state)
