"""DINO tuned for registration features: layer-wise lr decay and the patch-embedding multiplier (parameter groups and
the update they produce), iBOT block masks (exact counts, clustering, the loss reads exactly the masked tokens), the
EMA end momentum, the new keys' validation, and the DINORegPrimus4 presets."""

from __future__ import annotations

import math

import pytest
import torch

from nnssl.architectures import ARCHITECTURES
from nnssl.architectures.adaptation_plan import build_adaptation_plan, verify_adaptation_plan
from nnssl.architectures.primus import primus_variant
from nnssl.config import ConfigError, OptimConfig, TrainConfig, architecture_of
from nnssl.engine.optim import apply_schedule, base_lr, build_optimizer
from nnssl.methods import dino as dino_module
from nnssl.methods.dino import DINO, DINOConfig
from nnssl.methods.dino_head import LAST_LAYER_NAME
from nnssl.presets import resolve_config
from nnssl.transforms.masking import draw_block_mask, draw_unit_mask

TINY = dict(num_prototypes=64, head_hidden_dim=32, head_bottleneck_dim=16, global_crop_size=32, num_local_crops=0)


def make(arch="PrimusTiny", token_size=None, **kw) -> DINO:
    torch.manual_seed(0)
    cfg = DINOConfig(**{**TINY, "ibot": arch.startswith("Primus"), **kw})
    spec = ARCHITECTURES.get(arch)
    return DINO(cfg, spec if token_size is None else primus_variant(spec, token_size=token_size), (32, 32, 32))


def expected_scale(name: str, decay: float, mult: float, depth: int = 2) -> float:
    """PrimusTiny (2 blocks, num_layers 3): embeddings at 0, block b at b + 1, final norm and heads at 3."""
    if not name.startswith("student.backbone."):
        return 1.0
    inner = name[len("student.backbone.") :]
    if inner.startswith("network.down_projection."):
        return decay ** (depth + 1) * mult
    if inner in ("mask_token", "network.eva.pos_embed"):
        return decay ** (depth + 1)
    if inner.startswith("network.eva.blocks."):
        return decay ** (depth - int(inner.split(".")[3]))
    return 1.0


def test_layer_ids_of_both_families() -> None:
    net = make().student["backbone"]
    assert net.num_layers == 3
    ids = {n: net.layer_id(n) for n, _ in net.named_parameters()}
    assert ids["network.down_projection.proj.weight"] == 0 and ids["network.eva.pos_embed"] == 0
    assert ids["mask_token"] == 0 and ids["network.eva.blocks.0.attn.proj.weight"] == 1
    assert ids["network.eva.blocks.1.mlp.fc2.bias"] == 2 and ids["network.eva.norm.weight"] == 3
    cnn = make("ResEncTiny").student["backbone"]
    assert cnn.num_layers == len(cnn.network.encoder.stages) + 1 == 5
    cnn_ids = {n: cnn.layer_id(n) for n, _ in cnn.named_parameters()}
    assert {cnn_ids[n] for n in cnn_ids if n.startswith("network.encoder.stem.")} == {0}
    assert {cnn_ids[n] for n in cnn_ids if n.startswith("network.encoder.stages.3.")} == {4}
    assert cnn.is_patch_embedding("network.encoder.stem.convs.0.conv.weight")
    assert net.is_patch_embedding("network.down_projection.proj.weight") and not net.is_patch_embedding("mask_token")


def test_param_groups_carry_exactly_the_expected_lr_scales() -> None:
    decay, mult = 0.9, 0.2
    method = make(layer_decay=decay, patch_embed_lr_mult=mult, freeze_last_layer_epochs=2)
    groups = method.param_groups(0.04)
    of = {id(p): g for g in groups for p in g["params"]}
    trainable = [(n, p) for n, p in method.named_parameters() if p.requires_grad]
    assert len(of) == len(trainable)  # every trainable parameter exactly once
    for name, param in trainable:
        group = of[id(param)]
        assert group["lr_scale"] == pytest.approx(expected_scale(name, decay, mult), rel=1e-12), name
        no_decay = param.ndim <= 1 or name.endswith(("pos_embed", "mask_token"))
        assert group["weight_decay"] == (0.0 if no_decay else 0.04), name
        assert group.get("wd_scale", 1.0) == (0.0 if no_decay else 1.0), name
        assert group.get("freeze_epochs", 0) == (2 if f".{LAST_LAYER_NAME}." in f".{name}" else 0), name
    scales = sorted({round(g["lr_scale"], 12) for g in groups})
    assert scales == sorted({round(x, 12) for x in (0.9**3 * 0.2, 0.9**3, 0.9**2, 0.9, 1.0)})
    # off (1.0, 1.0): the three groups of before, no lr_scale
    plain = make().param_groups(0.04)
    assert len(plain) == 3 and all("lr_scale" not in g for g in plain)


def test_one_sgd_step_moves_each_weight_by_its_lr_scale_and_the_last_layer_stays_frozen() -> None:
    decay, mult = 0.5, 0.25  # far from 1, so a wrong exponent cannot pass
    method = make(layer_decay=decay, patch_embed_lr_mult=mult, freeze_last_layer_epochs=1)
    optim = OptimConfig(name="sgd", lr=0.1, momentum=0.0, nesterov=False, weight_decay=0.0, schedule="constant")
    train = TrainConfig(num_epochs=2, iterations_per_epoch=1)
    optimizer = build_optimizer(method.param_groups(0.0), optim, "cpu")
    named = [(n, p) for n, p in method.named_parameters() if p.requires_grad]
    before = {n: p.detach().clone() for n, p in named}
    for _, p in named:
        p.grad = torch.ones_like(p)
    lr = apply_schedule(optimizer, 0, optim, train)  # epoch 0: last layer frozen
    optimizer.step()
    assert lr == pytest.approx(0.1)
    for name, p in named:
        step = (before[name] - p.detach()).abs().max().item()
        frozen = f".{LAST_LAYER_NAME}." in f".{name}"
        expected = 0.0 if frozen else 0.1 * expected_scale(name, decay, mult)
        assert step == pytest.approx(expected, rel=1e-4, abs=1e-7), name
    # the biggest and the smallest update: the heads at lr, the patch embedding at lr * 0.5^3 * 0.25
    w = "student.backbone.network.down_projection.proj.weight"
    assert (before[w] - method.get_parameter(w)).abs().max().item() == pytest.approx(0.1 * 0.5**3 * 0.25, rel=1e-4)
    apply_schedule(optimizer, 1, optim, train)  # epoch 1: the last layer learns again, at scale 1
    last = [g for g in optimizer.param_groups if g.get("freeze_epochs")]
    assert last and all(g["lr"] == pytest.approx(0.1) for g in last)


def clustering(masked: torch.Tensor, grid) -> float:
    """Mean number of masked 6-neighbours of a masked unit."""
    v = masked.view(-1, *grid).float()
    p = torch.nn.functional.pad(v, (1, 1, 1, 1, 1, 1))
    shifts = [(1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0), (0, 0, 1), (0, 0, -1)]
    near = sum(p[:, 1 + a : 1 + a + grid[0], 1 + b : 1 + b + grid[1], 1 + c : 1 + c + grid[2]] for a, b, c in shifts)
    return float((near * v).sum() / v.sum())


def test_block_masks_exact_counts_and_clustered() -> None:
    grid = (8, 8, 8)
    g = torch.Generator().manual_seed(0)
    counts = torch.tensor([0, 1, 5, 100, 256, 358, 511, 512])
    mask = draw_block_mask(8, grid, 4, counts=counts, generator=g)
    assert mask.masked.sum(1).tolist() == counts.tolist()
    ratio = draw_block_mask(3, (12, 10, 8), 8, mask_ratio=0.55, generator=g)
    assert ratio.masked.sum(1).tolist() == [math.floor(0.55 * 960)] * 3 and ratio.voxels().shape == (3, 1, 96, 80, 64)
    grid = (16, 16, 16)
    block = draw_block_mask(8, grid, 4, mask_ratio=0.3, generator=g)
    random = draw_unit_mask(8, grid, 4, mask_ratio=0.3, generator=g)
    # uniform random: ~6 * 0.3 = 1.8 masked neighbours (less at the border); boxes: most neighbours are masked
    assert clustering(random.masked, grid) == pytest.approx(1.7, abs=0.15)
    assert clustering(block.masked, grid) > 2.5 * clustering(random.masked, grid)
    torch.manual_seed(3)
    a = draw_block_mask(2, grid, 4, mask_ratio=0.4)
    torch.manual_seed(3)
    assert torch.equal(a.masked, draw_block_mask(2, grid, 4, mask_ratio=0.4).masked)  # seeded by torch


def test_ibot_loss_reads_exactly_the_block_masked_tokens(monkeypatch) -> None:
    method = make(token_size=4, ibot_mask_mode="block", ibot_mask_ratio=(0.4, 0.7), ibot_sample_probability=1.0)
    net = method.student["backbone"]
    drawn, seen = [], []
    draw = net.draw_mask

    def spy_draw(*args, **kw):
        assert kw["mode"] == "block"
        drawn.append(draw(*args, **kw))
        return drawn[-1]

    original = dino_module.ibot_masked_loss

    def spy_loss(student, targets, masked, temp):
        seen.append((masked.clone(), student.shape[0], targets.shape[0]))
        return original(student, targets, masked, temp)

    monkeypatch.setattr(net, "draw_mask", spy_draw)
    monkeypatch.setattr(dino_module, "ibot_masked_loss", spy_loss)
    method.configure_schedule(10, 100)
    torch.manual_seed(0)
    out = method({"global_views": torch.randn(2, 2, 1, 32, 32, 32)})
    (mask,) = drawn
    masked, n_student, n_teacher = seen[0]
    assert torch.equal(masked, mask.masked)
    counts = mask.masked.sum(1)
    assert n_student == n_teacher == int(counts.sum())
    assert bool(((counts >= math.floor(0.4 * 512)) & (counts <= math.floor(0.7 * 512))).all())
    assert out.metrics["ibot_masked_fraction"] == pytest.approx(float(counts.sum()) / (4 * 512))
    assert clustering(mask.masked, (8, 8, 8)) > 3.0


def test_momentum_end_and_new_keys_are_validated() -> None:
    method = make(momentum_start=0.992, momentum_end=0.998)
    assert method.teacher.momentum_at(0, 100) == pytest.approx(0.992)
    assert method.teacher.momentum_at(99, 100) == pytest.approx(0.998)
    for override, allowed in [
        ("method.layer_decay=0", "in (0, 1]"),
        ("method.patch_embed_lr_mult=0", "> 0"),
        ("method.ibot_mask_mode=boxes", "one of random, block"),
        ("method.momentum_end=0.9", "in [method.momentum_start=0.99, 1]"),
        ("method.gin_p=1.5", "a probability"),
    ]:
        key, _, value = override.partition("=")
        with pytest.raises(ConfigError) as err:
            resolve_config("DemoDINO_PrimusTiny", [override])
        assert f"'{key}' = " in str(err.value) and allowed in str(err.value) and value in str(err.value)


def test_registration_presets() -> None:
    cfg = resolve_config("DINORegPrimus4")
    spec = architecture_of(cfg)
    assert spec.arch_kwargs["patch_embed_size"] == [4, 4, 4] and spec.arch_kwargs["embed_dim"] == 180
    assert spec.arch_kwargs["eva_depth"] == 16 and spec.arch_kwargs["eva_numheads"] == 3
    m = cfg.method_cfg
    assert (m.teacher_temp_start, m.teacher_temp_end, m.momentum_start, m.momentum_end) == (0.04, 0.07, 0.992, 0.998)
    assert (m.layer_decay, m.patch_embed_lr_mult, m.ibot_mask_mode, m.ibot_mask_ratio) == (
        0.9,
        0.2,
        "block",
        (0.4, 0.7),
    )
    assert (m.num_local_crops, m.global_crop_size, m.global_crop_scale, m.num_prototypes) == (0, 128, (0.6, 1.0), 8192)
    assert m.ibot and m.gin_p > 0 and cfg.train.grad_clip == 3.0 and cfg.optim.weight_decay == 0.04
    assert base_lr(cfg.optim, cfg.train) == pytest.approx(2e-3 * math.sqrt(32 / 1024))
    demo = resolve_config("DemoDINO_PrimusTiny4Reg")
    tiny = architecture_of(demo)
    assert tiny.token_size == 4 and tiny.arch_kwargs["embed_dim"] == 72 and demo.method_cfg.layer_decay == 0.9
    # the full-size network at a small input: 4^3 tokens, strict downstream load from the plan alone
    small = resolve_config("DINORegPrimus4", ["method.global_crop_size=16", "method.num_prototypes=64"])
    torch.manual_seed(0)
    method = DINO(small.method_cfg, architecture_of(small), small.train.patch_size)
    assert method.student["backbone"].grid == (4, 4, 4)
    plans = {"configurations": {"c": {"patch_size": [128, 128, 128]}}}
    verify_adaptation_plan(
        build_adaptation_plan(architecture_of(small), plans, "c", (16, 16, 16), 1), method.backbone().state_dict()
    )
