"""PCRLv2 with numbers: the global boxes' IoU constraint, local boxes inside the volume and the union of the globals,
views that are crops when nothing is augmented, a clean target that no augmentation aliases, the cosine term's closed
form, and every local crop's term counted exactly once."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from nnssl.architectures import ARCHITECTURES
from nnssl.losses.pcrlv2 import pcrlv2_similarity_losses, symmetric_negative_cosine
from nnssl.methods.pcrlv2 import UPSTREAM_GLOBAL_CROPS, UPSTREAM_LOCAL_CROPS, PCRLv2, PCRLv2Config
from nnssl.transforms.intensity import IntensityAugmentation
from nnssl.transforms.pcrlv2 import PCRLv2Views, best_iou, box_view, feasible_pairs, iou, parse_size, union_box

GLOBALS = [parse_size(s) for s in UPSTREAM_GLOBAL_CROPS]
LOCALS = [parse_size(s) for s in UPSTREAM_LOCAL_CROPS]


def upstream_views(**kwargs) -> PCRLv2Views:
    return PCRLv2Views(GLOBALS, (128, 128, 128), LOCALS, (64, 64, 64), **kwargs)


# ----------------------------------------------------------------------------------------- geometry
def test_iou_of_simple_boxes() -> None:
    a = ((0, 0, 0), (4, 4, 4))
    assert iou(a, a) == 1.0
    assert iou(a, ((2, 0, 0), (4, 4, 4))) == pytest.approx(32 / 96)
    assert iou(a, ((4, 0, 0), (4, 4, 4))) == 0.0
    assert best_iou((96, 96, 96), (160, 160, 160)) == pytest.approx(96**3 / 160**3)
    assert ((96, 96, 96), (160, 160, 160)) not in feasible_pairs(GLOBALS, 0.3)  # 0.216 < 0.3: upstream drops it


def test_global_boxes_reach_the_iou_and_locals_lie_inside_their_union_on_many_draws() -> None:
    np.random.seed(0)
    views = upstream_views()
    patch = (180, 180, 180)
    for _ in range(400):
        a, b, locals_ = views.boxes(patch)
        assert iou(a, b) >= 0.3
        union = union_box(a, b)
        assert len(locals_) == 6
        for box in (a, b, *locals_):
            assert all(s >= 0 and s + n <= p for s, n, p in zip(box[0], box[1], patch))
        for start, size in locals_:
            assert tuple(size) in LOCALS
            assert all(u0 <= s and s + n <= u0 + un for s, n, u0, un in zip(start, size, *union))


def test_the_fallback_placement_still_reaches_the_iou() -> None:
    np.random.seed(1)
    views = upstream_views(max_tries=0)  # never draw B at random: nested placement
    for _ in range(100):
        a, b, _ = views.boxes((180, 180, 180))
        assert iou(a, b) >= 0.3 and iou(a, b) == pytest.approx(best_iou(a[1], b[1]))


def test_an_unaugmented_view_of_box_size_is_the_crop() -> None:
    patch = torch.randn(2, 20, 18, 16, generator=torch.Generator().manual_seed(0))
    box = ((3, 2, 5), (8, 10, 6))
    view = box_view(patch, box, (8, 10, 6))
    assert torch.allclose(view, patch[:, 3:11, 2:12, 5:11], atol=1e-5)
    # a 90 degree turn about axis 0 maps the crop's (axis 1, axis 2) plane onto itself (square box in that plane)
    rot = np.array([[1, 0, 0], [0, 0, -1], [0, 1, 0]], dtype=float)
    turned = box_view(patch, ((3, 4, 5), (8, 6, 6)), (8, 6, 6), rot)
    crop = patch[:, 3:11, 4:10, 5:11]
    assert any(torch.allclose(turned, torch.rot90(crop, k, dims=(2, 3)), atol=1e-4) for k in (1, 3))


# ----------------------------------------------------------------------------------------- no aliasing
def test_the_clean_target_is_not_aliased_by_the_augmented_view() -> None:
    np.random.seed(2)
    views = PCRLv2Views(
        [(24, 24, 24), (32, 32, 24)], (32, 32, 32), [(8, 8, 8), (16, 16, 16)], (16, 16, 16),
        intensity=IntensityAugmentation(p_noise=1.0, p_rician_given_noise=0.0, noise_std=(0.1, 0.25)),
    )  # fmt: skip
    image = np.random.normal(size=(1, 40, 40, 40)).astype(np.float32)
    out = views({"image": image})
    clean, augmented = out["global_clean"], out["global_views"][0]
    assert not np.shares_memory(clean, out["global_views"]) and not np.shares_memory(clean, image)
    assert not np.allclose(clean, augmented)  # noise with p 1: the input differs from the target
    before = clean.copy()
    out["global_views"][0] += 5.0  # mutate the augmented view
    augmented *= -1.0
    assert np.array_equal(out["global_clean"], before)
    # without intensity augmentation the augmented global view IS the target's values (same spatial transform)
    plain = PCRLv2Views(
        [(24, 24, 24)], (32, 32, 32), [(8, 8, 8)], (16, 16, 16), intensity=IntensityAugmentation.none()
    )({"image": image})
    assert np.array_equal(plain["global_views"][0], plain["global_clean"])
    assert not np.shares_memory(plain["global_views"], plain["global_clean"])


# ----------------------------------------------------------------------------------------- losses
def test_symmetric_cosine_closed_form() -> None:
    e = torch.eye(4)
    same = symmetric_negative_cosine(e[:1], e[:1], e[:1], e[:1])
    assert float(same) == pytest.approx(0.0, abs=1e-7)  # identical embeddings, identity predictor
    assert float(symmetric_negative_cosine(e[:1], e[:1], -e[:1], -e[:1])) == pytest.approx(2.0)
    assert float(symmetric_negative_cosine(e[:1], e[:1], e[1:2], e[1:2])) == pytest.approx(1.0)
    a, b = 0.3, 1.1  # cos(p_v, z_w) = cos a, cos(p_w, z_v) = cos b
    p_v = torch.tensor([[math.cos(a), math.sin(a), 0.0]])
    z_w = torch.tensor([[1.0, 0.0, 0.0]])
    p_w = torch.tensor([[0.0, 0.0, 2.0]])
    z_v = torch.tensor([[0.0, math.sin(b), math.cos(b)]])
    value = symmetric_negative_cosine(p_v, z_v, p_w, z_w)
    assert float(value) == pytest.approx(1.0 - (math.cos(a) + math.cos(b)) / 2.0, abs=1e-6)


def test_targets_are_stop_gradient() -> None:
    z = torch.randn(3, 5, requires_grad=True)
    p = torch.randn(3, 5, requires_grad=True)
    symmetric_negative_cosine(p, z, p.roll(1, 0), z.roll(1, 0)).sum().backward()
    assert z.grad is None and p.grad is not None


def test_every_local_term_is_counted_exactly_once() -> None:
    """Globals along e1, local i at angle t_i from e1, identity predictor: L_local = mean_i (1 - cos t_i). Upstream's
    loop (the same local crop every iteration) would give 1 - cos t_0; a summed loop 2L times that mean."""
    angles = torch.tensor([0.1, 0.5, 0.9, 1.3, 1.7, 2.5])
    local = torch.stack([torch.cos(angles), torch.sin(angles), torch.zeros(6)], dim=-1)[None]  # (1, 6, 3)
    g = torch.tensor([[1.0, 0.0, 0.0]])
    global_sim, local_sim = pcrlv2_similarity_losses([(g, g)], [(g, g)], [(local, local)])
    assert float(global_sim) == pytest.approx(0.0, abs=1e-7)
    assert float(local_sim) == pytest.approx(float((1 - torch.cos(angles)).mean()), abs=1e-6)
    # perturbation: turning only local 3 to the opposite direction changes L_local by its own term / 6
    moved = local.clone()
    moved[0, 3] = -g[0]
    _, local_moved = pcrlv2_similarity_losses([(g, g)], [(g, g)], [(moved, moved)])
    delta = (2.0 - (1 - math.cos(float(angles[3])))) / 6
    assert float(local_moved - local_sim) == pytest.approx(delta, abs=1e-6)
    # locals are compared with their own image's globals only
    two = torch.stack([g[0], -g[0]])  # image 0 along e1, image 1 along -e1
    locals_two = torch.stack([g.expand(6, 3), -g.expand(6, 3)])  # each image's locals agree with its globals
    _, own = pcrlv2_similarity_losses([(two, two)], [(two, two)], [(locals_two, locals_two)])
    assert float(own) == pytest.approx(0.0, abs=1e-7)


def test_scales_are_averaged() -> None:
    g = torch.tensor([[1.0, 0.0]])
    other = torch.tensor([[0.0, 1.0]])
    loc = g[None]
    glob, _ = pcrlv2_similarity_losses([(g, g), (g, g)], [(g, g), (other, other)], [(loc, loc), (loc, loc)])
    assert float(glob) == pytest.approx(0.5)  # scale 0: 0, scale 1: 1


# ----------------------------------------------------------------------------------------- the method
def test_forward_restores_the_clean_view_and_reports_every_term() -> None:
    torch.manual_seed(0)
    cfg = PCRLv2Config(
        global_crop_sizes=("16x16x16",), global_size=(16, 16, 16), local_crop_sizes=("8x8x8",), local_size=(16, 16, 16),
        num_locals=2,
    )  # fmt: skip
    method = PCRLv2(cfg, ARCHITECTURES.get("ResEncTiny"), (24, 24, 24))
    assert method.network_patch_size() == (16, 16, 16) and len(method.heads) == 2
    np.random.seed(0)
    transform = method.train_transform()
    samples = [transform({"image": np.random.normal(size=(1, 24, 24, 24)).astype(np.float32)}) for _ in range(2)]
    batch = {k: torch.as_tensor(np.stack([s[k] for s in samples])) for k in samples[0]}
    method.eval()
    with torch.no_grad():
        out = method(batch)
        prediction = method.net.reconstruct(batch["global_views"][:, 0]).prediction
    assert out.metrics["rec"] == pytest.approx(float(((prediction - batch["global_clean"]) ** 2).mean()), rel=1e-5)
    total = out.metrics["rec"] + out.metrics["mid_rec"] + out.metrics["global_sim"] + out.metrics["local_sim"]
    assert float(out.loss) == pytest.approx(total, rel=1e-5)
