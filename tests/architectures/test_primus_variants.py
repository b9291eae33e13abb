"""Primus with any token size / width / depth / heads (``arch.*`` keys): the token grid, masks, decoders and the
adaptation plan follow the chosen shape, and the unchanged presets stay exactly as registered."""

from __future__ import annotations

import math

import pytest
import torch

from nnssl.architectures import ARCHITECTURES
from nnssl.architectures.adaptation_plan import (
    build_adaptation_plan,
    build_downstream_network,
    load_encoder_weights,
    verify_adaptation_plan,
)
from nnssl.architectures.primus import PRIMUS_PATH, eva_forward_tokens, flatten_tokens, primus_variant
from nnssl.backbones import build_backbone
from nnssl.config import ConfigError, architecture_of
from nnssl.engine.optim import build_optimizer
from nnssl.methods import METHODS
from nnssl.methods.mae import MAE, MAEConfig
from nnssl.methods.simmim import SimMIM, SimMIMConfig
from nnssl.presets import config_from_dict, config_to_dict, resolve_config

PLANS = {"configurations": {"c": {"patch_size": [160, 160, 160], "spacing": [1.0, 1.0, 1.0]}}}


def tiny4():
    return primus_variant(ARCHITECTURES.get("PrimusTiny"), token_size=4)


def test_default_keys_keep_the_registered_entry() -> None:
    for name in ("PrimusS", "PrimusM", "PrimusTiny", "ResEncL"):
        cfg = resolve_config("DemoDINO_PrimusTiny")
        cfg.architecture = name
        assert architecture_of(cfg) is ARCHITECTURES.get(name)
    # the same shape spelled out explicitly is still the registered preset (built by name downstream)
    spec = primus_variant(ARCHITECTURES.get("PrimusM"), token_size=8, embed_dim=864, depth=16, num_heads=12)
    assert spec is ARCHITECTURES.get("PrimusM") and spec.arch_class_name == "PrimusM"


def test_token_size_4_grid_masks_and_shapes() -> None:
    spec = tiny4()
    assert (spec.token_size, spec.patch_multiple, spec.arch_class_name) == (4, 4, PRIMUS_PATH)
    net = build_backbone(spec, 1, (16, 24, 32), reconstruction=True)
    assert net.token_size == 4 and net.grid == (4, 6, 8) and net.num_tokens == 192
    assert tuple(net.network.down_projection.proj.kernel_size) == (4, 4, 4)
    assert net.map_shapes() == [(72, (4, 6, 8))] and net.map_shapes((8, 8, 8)) == [(72, (2, 2, 2))]
    assert type(net).unit_for(spec, block_size=16) == 4 and net.mask_unit(16) == 4
    mask = net.draw_mask(2, mask_ratio=0.5, generator=torch.Generator().manual_seed(0))
    assert mask.grid == (4, 6, 8) and mask.masked.sum(1).tolist() == [96, 96]
    assert mask.voxels().shape == (2, 1, 16, 24, 32) and mask.voxels().sum().item() == 2 * 96 * 64
    # token t covers x[..., 4w:4w+4, 4h:4h+4, 4d:4d+4] in (w h d) order: a one-token input lights up one token
    x = torch.zeros(1, 1, 16, 24, 32)
    x[..., 4:8, 8:12, 28:32] = 1.0
    tokens = flatten_tokens(net.network.down_projection(x) - net.network.down_projection(torch.zeros_like(x)))
    assert tokens.abs().sum(-1).nonzero()[:, 1].tolist() == [1 * 48 + 2 * 8 + 7]
    # encode, masked reconstruct (token dropping) and PatchDecode all follow the 4^3 grid
    x = torch.randn(2, 1, 16, 24, 32)
    assert net.encode(x).maps[0].shape == (2, 72, 4, 6, 8)
    rec = net.reconstruct(x, mask)
    assert rec.prediction.shape == x.shape and rec.features.maps[0].shape == (2, 72, 4, 6, 8)
    assert len(net.network.up_projection.decode) == 2  # log2(4) transposed-convolution stages


@pytest.mark.parametrize("method", ["MAE", "SimMIM"])
def test_masked_image_modelling_on_token_size_4(method: str) -> None:
    torch.manual_seed(0)
    if method == "MAE":
        m = MAE(MAEConfig(mask_ratio=0.75), tiny4(), (16, 16, 16))
    else:
        m = SimMIM(SimMIMConfig(block_size=4), tiny4(), (16, 16, 16))
    out = m({"image": torch.randn(2, 1, 16, 16, 16)})
    assert math.isfinite(float(out.loss.detach()))
    out.loss.backward()
    assert m.backbone().down_projection.proj.weight.grad.abs().sum() > 0


def test_token_size_4_pretrain_save_rebuild_from_plan_alone(tmp_path) -> None:
    """One DINO step on a token-size-4 PrimusTiny, save as the engine does, rebuild from the plan, load strictly."""
    cfg = resolve_config("DemoDINO_PrimusTiny", ["arch.token_size=4", "method.num_local_crops=0"])
    spec = architecture_of(cfg)
    torch.manual_seed(0)
    method = METHODS.get(cfg.method)(cfg.method_cfg, spec, cfg.train.patch_size)
    method.configure_schedule(10, 100)
    before = method.backbone().eva.blocks[0].mlp.fc1_g.weight.detach().clone()
    opt = build_optimizer(method.param_groups(0.04), cfg.optim, "cpu")
    views = torch.randn(2, 2, 1, 32, 32, 32)
    method.train()
    method({"global_views": views}).loss.backward()
    opt.step()
    assert not torch.equal(before, method.backbone().eva.blocks[0].mlp.fc1_g.weight)
    plan = build_adaptation_plan(spec, PLANS, "c", method.network_patch_size(), 1)
    torch.save({"network_weights": method.backbone().state_dict(), "nnssl_adaptation_plan": plan}, tmp_path / "c.pth")
    ckpt = torch.load(tmp_path / "c.pth", weights_only=True)
    plan = ckpt["nnssl_adaptation_plan"]
    assert plan["architecture_plans"]["arch_class_name"] == PRIMUS_PATH
    assert plan["architecture_plans"]["arch_kwargs"]["patch_embed_size"] == [4, 4, 4]
    verify_adaptation_plan(plan, ckpt["network_weights"])
    downstream = build_downstream_network(plan, num_classes=1).eval()
    load_encoder_weights(downstream, plan, ckpt["network_weights"])
    pretrained = method.backbone().eval()
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        ours = eva_forward_tokens(pretrained.eva, flatten_tokens(pretrained.down_projection(x)))
        theirs = eva_forward_tokens(downstream.eva, flatten_tokens(downstream.down_projection(x)))
        assert ours.shape == (1, 512, 72)
        torch.testing.assert_close(theirs, ours, rtol=0, atol=0)
        downstream.load_state_dict(ckpt["network_weights"], strict=True)  # the whole network too
        torch.testing.assert_close(downstream(x), pretrained(x), rtol=0, atol=0)


def test_width_depth_heads_of_a_full_size_entry() -> None:
    cfg = resolve_config(
        "DINOv2EvaTrainer", ["arch.token_size=4", "arch.embed_dim=180", "arch.depth=3", "arch.num_heads=3"]
    )
    spec = architecture_of(cfg)
    assert spec.arch_kwargs == {
        "embed_dim": 180,
        "patch_embed_size": [4, 4, 4],
        "eva_depth": 3,
        "eva_numheads": 3,
        "drop_path_rate": 0.0,
        "init_values": 0.1,
        "scale_attn_inner": True,
    }
    net = spec.build(1, 1, (16, 16, 16))
    assert len(net.eva.blocks) == 3 and net.embed_dim == 180 and net.eva.blocks[0].attn.num_heads == 3
    assert getattr(net.eva.blocks[0].drop_path1, "drop_prob", 0.0) == 0.0  # stochastic depth ramps from 0 ...
    assert net.eva.blocks[-1].drop_path1.drop_prob == pytest.approx(0.2)  # ... to the pre-training rate
    down = build_downstream_network(build_adaptation_plan(spec, PLANS, "c", (16, 16, 16), 1))
    assert sorted(down.state_dict()) == sorted(net.state_dict())
    assert config_from_dict(config_to_dict(cfg)) == cfg


@pytest.mark.parametrize(
    ("override", "key", "allowed"),
    [
        ("arch.token_size=3", "arch.token_size", "power of two"),
        ("arch.token_size=32", "arch.token_size", "divisor of every side of train.patch_size"),
        ("arch.embed_dim=100", "arch.embed_dim", "multiple of 6 * arch.num_heads = 18"),
        ("arch.num_heads=5", "arch.embed_dim", "multiple of 6 * arch.num_heads = 30"),
        ("arch.depth=0", "arch.depth", ">= 1"),
    ],
)
def test_bad_shapes_are_refused_naming_the_key(override: str, key: str, allowed: str) -> None:
    with pytest.raises(ConfigError) as err:
        resolve_config("DemoDINO_PrimusTiny", [override])
    assert f"'{key}'" in str(err.value) and allowed in str(err.value)


def test_arch_keys_refused_on_cnn() -> None:
    with pytest.raises(ConfigError, match=r"'arch.token_size' = 4 .* none on ResEncTiny"):
        resolve_config("DemoDINO_ResEncTiny", ["arch.token_size=4"])
