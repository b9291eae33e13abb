"""Models Genesis: each corruption measured on its own, identity at p = 0, the [0, 1] round trip, no aliasing of the
clean target, and a loss over every voxel (methods.md 4.4 and 7 items 7-8)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nnssl.architectures import ARCHITECTURES
from nnssl.architectures.adaptation_plan import build_adaptation_plan, verify_adaptation_plan
from nnssl.methods.models_genesis import (
    GenesisCorruption,
    ModelsGenesis,
    ModelsGenesisConfig,
    ShuffleBlocks,
    apply_table,
    bezier_map,
    draw_shuffle_blocks,
    from_unit,
    in_painting,
    local_pixel_shuffle,
    out_painting,
    random_flips,
    to_unit,
    uniform_table,
)

OFF = {"flip_p": 0.0, "shuffle_p": 0.0, "nonlinear_p": 0.0, "paint_p": 0.0}


def volume(seed: int = 0, shape=(1, 20, 24, 28)) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def test_every_probability_zero_is_the_identity_and_the_target_is_a_separate_array() -> None:
    x = volume()
    out = GenesisCorruption(ModelsGenesisConfig(**OFF))({"image": x})
    np.testing.assert_array_equal(out["image"], x)
    np.testing.assert_array_equal(out["target"], x)
    assert not np.shares_memory(out["image"], out["target"])
    assert not np.shares_memory(out["target"], x)


@pytest.mark.parametrize("seed", range(5))
def test_clean_target_is_not_aliased_by_the_corruptions(seed: int) -> None:
    """Every corruption on (p = 1): the target is exactly the flipped clean crop, whatever the input became."""
    np.random.seed(seed)
    x = volume(seed)
    original = x.copy()
    cfg = ModelsGenesisConfig(flip_p=1.0, shuffle_p=1.0, nonlinear_p=1.0, paint_p=1.0, inpaint_p=0.5)
    out = GenesisCorruption(cfg)({"image": x})
    np.testing.assert_array_equal(x, original)  # the sample itself is untouched
    assert not np.shares_memory(out["image"], out["target"])
    flipped = original
    np.random.seed(seed)
    _, axes = random_flips(original, 1.0, 3)
    for axis in axes:
        flipped = np.flip(flipped, axis=axis + 1)
    np.testing.assert_array_equal(out["target"], flipped)
    assert not np.array_equal(out["image"], out["target"])
    out["image"][...] = 0.0
    np.testing.assert_array_equal(out["target"], flipped)


def test_unit_round_trip_is_exact_and_spans_zero_to_one() -> None:
    x = volume(1, (1, 30, 30, 30)) * 3.0 + 0.7
    x[0, :4] = 0.0  # exact zeros (zero padding) survive too
    u, lo, span = to_unit(x)
    assert u.min() == 0.0 and u.max() == 1.0
    back = from_unit(u, lo, span)
    assert back.dtype == np.float32
    np.testing.assert_array_equal(back, x)
    constant = np.full((1, 4, 4, 4), 2.5, dtype=np.float32)
    np.testing.assert_array_equal(from_unit(*to_unit(constant)), constant)


def test_flips_mirror_spatial_axes_only() -> None:
    np.random.seed(0)
    x = volume()
    flipped, axes = random_flips(x, 1.0, 3)
    assert len(axes) == 3 and all(a in (0, 1, 2) for a in axes)
    expected = x
    for axis in axes:
        expected = np.flip(expected, axis=axis + 1)
    np.testing.assert_array_equal(flipped, expected)
    assert random_flips(x, 0.0, 3)[1] == []


def test_local_pixel_shuffle_permutes_values_inside_each_chosen_block_only() -> None:
    np.random.seed(3)
    x = np.random.default_rng(3).normal(size=(2, 40, 30, 50)).astype(np.float32)
    blocks = draw_shuffle_blocks(x.shape[1:], 0.8, 0.1)
    assert all(1 <= b <= d // 10 for b, d in zip(blocks.side, x.shape[1:]))
    blocks = ShuffleBlocks((4, 3, 5), (1, 2, 0), (9, 9, 10), blocks.chosen[:0])
    blocks = ShuffleBlocks(blocks.side, blocks.start, blocks.count, np.random.uniform(size=810) < 0.8)
    out = local_pixel_shuffle(x, blocks)
    region = blocks.region()
    outside = np.ones(x.shape[1:], bool)
    outside[region] = False
    np.testing.assert_array_equal(out[:, outside], x[:, outside])
    index = 0
    for i in range(9):
        for j in range(9):
            for k in range(10):
                sl = tuple(slice(o + n * b, o + (n + 1) * b) for o, n, b in zip(blocks.start, (i, j, k), blocks.side))
                a, b = x[(slice(None), *sl)].reshape(2, -1), out[(slice(None), *sl)].reshape(2, -1)
                if blocks.chosen[index]:
                    # the same multiset of voxels (channels move together), in another order
                    order_a, order_b = np.argsort(a[0]), np.argsort(b[0])
                    np.testing.assert_array_equal(a[:, order_a], b[:, order_b])
                else:
                    np.testing.assert_array_equal(a, b)
                index += 1
    assert (out != x).mean() > 0.5


def test_bezier_map_is_monotone_onto_the_unit_interval() -> None:
    directions = set()
    grid = np.linspace(0.0, 1.0, 2001)
    for seed in range(20):
        np.random.seed(seed)
        xs, ys = bezier_map(20_000)
        y = apply_table(grid, uniform_table(xs, ys))
        np.testing.assert_allclose(y, np.interp(grid, xs, ys), atol=1e-4)  # the fast lookup = the curve
        assert y.min() >= 0.0 and y.max() <= 1.0
        steps = np.diff(y)
        increasing = bool((steps >= 0).all())
        assert increasing or bool((steps <= 0).all())
        assert (y[0], y[-1]) == ((0.0, 1.0) if increasing else (1.0, 0.0))
        directions.add(increasing)
    assert directions == {True, False}  # reversed about half of the time


def test_nonlinear_map_keeps_or_reverses_the_order_and_stays_in_the_crop_range() -> None:
    x = volume(4)
    for seed in range(6):
        np.random.seed(seed)
        out = GenesisCorruption(ModelsGenesisConfig(**{**OFF, "nonlinear_p": 1.0}))({"image": x})["image"]
        assert out.min() >= x.min() - 1e-5 and out.max() <= x.max() + 1e-5
        by_input = out.ravel()[np.argsort(x.ravel(), kind="stable")]
        steps = np.diff(by_input)
        assert (steps >= -1e-6).all() or (steps <= 1e-6).all()


def test_in_painting_changes_only_inside_its_boxes() -> None:
    np.random.seed(5)
    u = np.random.default_rng(5).uniform(size=(1, 36, 42, 48))
    out, boxes = in_painting(u)
    assert 1 <= len(boxes) <= 5
    inside = np.zeros(u.shape[1:], bool)
    for box in boxes:
        inside[box] = True
        for s, d in zip(box, u.shape[1:]):
            assert d // 6 <= s.stop - s.start <= d // 3 and s.start >= 3 and s.stop <= d - 3
    np.testing.assert_array_equal(out[:, ~inside], u[:, ~inside])
    assert (out[:, inside] != u[:, inside]).mean() > 0.99
    assert out.min() >= 0.0 and out.max() <= 1.0


def test_out_painting_keeps_the_original_only_inside_its_boxes() -> None:
    np.random.seed(6)
    u = np.random.default_rng(6).uniform(size=(1, 35, 42, 49))
    out, boxes = out_painting(u)
    assert 1 <= len(boxes) <= 5
    kept = np.zeros(u.shape[1:], bool)
    for box in boxes:
        kept[box] = True
        for s, d in zip(box, u.shape[1:]):
            assert d - 4 * d // 7 <= s.stop - s.start <= d - 3 * d // 7
    np.testing.assert_array_equal(out[:, kept], u[:, kept])
    assert (out[:, ~kept] != u[:, ~kept]).mean() > 0.99
    assert out.min() >= 0.0 and out.max() <= 1.0


def test_painting_noise_lies_in_the_crops_own_range() -> None:
    x = volume(7) * 2.0 - 1.0
    np.random.seed(7)
    out = GenesisCorruption(ModelsGenesisConfig(**{**OFF, "paint_p": 1.0, "inpaint_p": 0.0}))({"image": x})["image"]
    assert out.min() >= x.min() and out.max() <= x.max()
    assert (out != x).mean() > 0.3  # out-painting replaced most voxels


def _method(arch: str = "ResEncTiny", **cfg) -> ModelsGenesis:
    torch.manual_seed(0)
    return ModelsGenesis(ModelsGenesisConfig(**cfg), ARCHITECTURES.get(arch), (16, 16, 16))


def test_loss_is_the_mse_over_every_voxel() -> None:
    """Perturbation: adding d to one target voxel changes the loss by ((e - d)^2 - e^2) / N, e the error there."""
    method = _method().eval()
    image = torch.randn(2, 1, 16, 16, 16)
    target = torch.randn(2, 1, 16, 16, 16)
    with torch.no_grad():
        prediction = method.net.reconstruct(image).prediction
        base = method({"image": image, "target": target}).loss
        torch.testing.assert_close(base, F.mse_loss(prediction, target))
        for voxel in [(0, 0, 0, 0, 0), (1, 0, 15, 3, 9)]:
            moved = target.clone()
            moved[voxel] += 30.0
            err = float(prediction[voxel] - target[voxel])
            change = float(method({"image": image, "target": moved}).loss - base)
            assert change == pytest.approx(((err - 30.0) ** 2 - err**2) / target.numel(), rel=1e-4)


def test_anonymized_voxels_do_not_count_when_asked() -> None:
    method = _method(ignore_anonymized=True).eval()
    image, target = torch.randn(2, 1, 16, 16, 16), torch.randn(2, 1, 16, 16, 16)
    anon = torch.zeros(2, 1, 16, 16, 16)
    anon[:, :, :5] = 1.0
    moved = target.clone()
    moved[:, :, :5] += 10.0
    with torch.no_grad():
        a = method({"image": image, "target": target, "anonymization_mask": anon}).loss
        b = method({"image": image, "target": moved, "anonymization_mask": anon}).loss
    assert float(a) == float(b)


def test_transform_flips_the_anonymization_mask_with_the_image() -> None:
    x = volume(8, (1, 12, 12, 12))
    anon = (x > 0.5).astype(np.int8)
    np.random.seed(2)
    out = GenesisCorruption(ModelsGenesisConfig(**{**OFF, "flip_p": 1.0}))({"image": x, "anonymization_mask": anon})
    np.testing.assert_array_equal(out["anonymization_mask"], (out["target"] > 0.5).astype(np.int8))


@pytest.mark.parametrize("arch", ["ResEncTiny", "PrimusTiny"])
def test_backbone_loads_strictly_into_a_fresh_downstream_network(arch: str) -> None:
    method = _method(arch)
    spec = ARCHITECTURES.get(arch)
    fresh = spec.build(1, 1, (16, 16, 16))
    fresh.load_state_dict(method.backbone().state_dict(), strict=True)
    plans = {"configurations": {"c": {"spacing": [1.0] * 3, "patch_size": [16] * 3}}}
    verify_adaptation_plan(build_adaptation_plan(spec, plans, "c", (16, 16, 16), 1), method.backbone().state_dict())
