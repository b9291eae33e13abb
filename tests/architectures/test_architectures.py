"""Registry, real ResEnc-L / Primus-M configuration, token order, Eva subset forward, tiny variants, summary."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from nnssl.architectures import ARCHITECTURES, build_network, summary
from nnssl.architectures.primus import (
    eva_forward_tokens,
    flatten_tokens,
    primus_token_grid,
    token_grid_positions,
    unflatten_tokens,
)
from nnssl.architectures.summary import count_flops, count_parameters, format_summary
from nnssl.transforms.masking import UnitMask, draw_unit_mask


def _smallest_patch(name: str) -> tuple[int, int, int]:
    side = {"ResEncL": 64, "ResEncTiny": 16}.get(name, 16)
    return (side, side, side)


@pytest.fixture(scope="module")
def resenc_l() -> nn.Module:
    torch.manual_seed(0)
    return build_network("ResEncL", 1, 1, (64, 64, 64))


@pytest.fixture(scope="module")
def primus_m() -> nn.Module:
    torch.manual_seed(0)
    return build_network("PrimusM", 1, 1, (32, 32, 32))


def test_registry_names():
    assert ARCHITECTURES.names() == sorted(
        ["ResEncL", "PrimusS", "PrimusB", "PrimusM", "PrimusL", "ResEncTiny", "PrimusTiny"]
    )
    with pytest.raises(KeyError, match="ResEncL"):
        ARCHITECTURES.get("ResEncLL")


@pytest.mark.parametrize("name", ARCHITECTURES.names())
def test_every_architecture_builds_and_exposes_its_adaptation_keys(name):
    spec = ARCHITECTURES.get(name)
    # the large presets are constructed on the meta device (same modules and keys, no memory or init time);
    # ResEnc-L and Primus-M are also built for real and run below
    with torch.device("cpu" if spec.tiny else "meta"):
        net = build_network(name, 1, 1, _smallest_patch(name))
    keys = set(net.state_dict())
    assert any(k.startswith(spec.key_to_encoder + ".") for k in keys)
    assert any(k.startswith(spec.key_to_stem + ".") for k in keys)
    for key in spec.keys_to_in_proj:
        assert f"{key}.weight" in keys
    if spec.key_to_lpe is not None:
        assert spec.key_to_lpe in keys
    # dna's networks carry their own adaptation keys: ours must agree
    assert net.key_to_encoder == spec.key_to_encoder
    assert net.key_to_stem == spec.key_to_stem
    assert tuple(net.keys_to_in_proj) == spec.keys_to_in_proj
    assert getattr(net, "key_to_lpe", None) == spec.key_to_lpe


def test_patch_size_is_checked():
    with pytest.raises(ValueError, match="multiples of 32"):
        build_network("ResEncL", 1, 1, (48, 64, 64))
    with pytest.raises(ValueError, match="at least 64"):
        build_network("ResEncL", 1, 1, (32, 64, 64))
    with pytest.raises(ValueError, match="multiples of 8"):
        build_network("PrimusTiny", 1, 1, (20, 16, 16))


def test_resenc_l_is_upstreams_configuration(resenc_l):
    net = resenc_l
    enc = net.encoder
    assert len(enc.stages) == 6
    assert enc.output_channels == [32, 64, 128, 256, 320, 320]
    assert [len(stage.blocks) for stage in enc.stages] == [1, 3, 4, 6, 6, 6]
    assert [list(s) for s in enc.strides] == [[1, 1, 1]] + [[2, 2, 2]] * 5
    convs = [m for m in net.modules() if isinstance(m, nn.Conv3d)]
    assert all(c.kernel_size in ((3, 3, 3), (1, 1, 1)) for c in convs)
    assert all(c.bias is not None for c in convs if c.kernel_size == (3, 3, 3))
    norms = [m for m in net.modules() if isinstance(m, nn.InstanceNorm3d)]
    assert norms and all(n.eps == 1e-5 and n.affine for n in norms)
    acts = [m for m in net.modules() if isinstance(m, nn.LeakyReLU)]
    assert acts and all(a.inplace for a in acts)
    assert net.decoder.deep_supervision is False
    assert len(net.decoder.stages) == 5
    assert count_parameters(net) == 102_348_965


def test_primus_m_is_upstreams_configuration(primus_m):
    net = primus_m
    eva = net.eva
    assert eva.embed_dim == 864 and len(eva.blocks) == 16
    assert eva.blocks[0].attn.num_heads == 12
    assert net.down_projection.proj.kernel_size == (8, 8, 8) and net.down_projection.proj.stride == (8, 8, 8)
    assert eva.pos_embed.shape == (1, 64, 864)
    assert eva.rope is not None and eva.rope.get_embed().shape == (64, 2 * 864 // 12)
    # LayerScale init 0.1, pre-training drop-path rising linearly to 0.2
    assert torch.allclose(eva.blocks[0].gamma_1, torch.full((864,), 0.1))
    assert eva.blocks[-1].drop_path1.drop_prob == pytest.approx(0.2)
    assert eva.blocks[0].attn.norm.__class__.__name__ == "LayerNorm"  # scale_attn_inner=True
    assert count_parameters(net) == 144_929_825


def test_real_resenc_l_forward_backward_64(resenc_l):
    torch.manual_seed(0)
    net = resenc_l.train()
    x = torch.randn(1, 1, 64, 64, 64)
    y = net(x)
    assert y.shape == (1, 1, 64, 64, 64)
    y.square().mean().backward()
    grad = net.encoder.stem.convs[0].conv.weight.grad
    assert grad is not None and grad.abs().sum() > 0


def test_real_primus_m_forward_backward_32(primus_m):
    torch.manual_seed(0)
    net = primus_m.train()
    x = torch.randn(1, 1, 32, 32, 32)
    y = net(x)
    assert y.shape == (1, 1, 32, 32, 32)
    y.square().mean().backward()
    assert net.eva.pos_embed.grad.abs().sum() > 0
    assert net.down_projection.proj.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["ResEncTiny", "PrimusTiny"])
def test_tiny_variants_forward_backward(name):
    """Tiny = under 0.5M parameters; their speed is not asserted here (no wall-clock checks in tests)."""
    torch.manual_seed(0)
    net = build_network(name, 1, 1, (32, 32, 32))
    x = torch.randn(2, 1, 32, 32, 32)
    y = net(x)
    y.square().mean().backward()
    assert y.shape == (2, 1, 32, 32, 32)
    # every parameter but the unused deep-supervision heads of the U-Net decoder gets a gradient
    no_grad = [n for n, p in net.named_parameters() if p.grad is None]
    assert all(n.startswith("decoder.seg_layers.") for n in no_grad), no_grad
    assert count_parameters(net) < 500_000


# ----------------------------------------------------------------------------- token order (upstream B3/B4)

NONCUBIC = (16, 24, 32)  # token grid (2, 3, 4): every axis distinguishable


def test_token_grid_and_positions():
    assert primus_token_grid((160, 160, 160)) == (20, 20, 20)
    assert primus_token_grid(NONCUBIC) == (2, 3, 4)
    with pytest.raises(ValueError, match="not divisible by the token size 8"):
        primus_token_grid((16, 20, 32))
    positions = token_grid_positions((2, 3, 4)).numpy()
    expected = np.stack(np.unravel_index(np.arange(24), (2, 3, 4)), axis=-1)
    np.testing.assert_array_equal(positions, expected)


def test_dna_primus_flattens_tokens_w_h_d():
    torch.manual_seed(0)
    net = build_network("PrimusTiny", 1, 1, NONCUBIC).eval()
    captured = {}
    net.eva.register_forward_pre_hook(lambda module, args: captured.__setitem__("tokens", args[0].detach()))
    x = torch.randn(1, 1, *NONCUBIC)
    with torch.no_grad():
        net(x)
        grid = net.down_projection(x)  # (1, C, 2, 3, 4)
    tokens = captured["tokens"]
    assert tokens.shape == (1, 24, 72)
    for t, (w, h, d) in enumerate(token_grid_positions((2, 3, 4)).tolist()):
        torch.testing.assert_close(tokens[0, t], grid[0, :, w, h, d])
    torch.testing.assert_close(flatten_tokens(grid), tokens)
    torch.testing.assert_close(unflatten_tokens(tokens, (2, 3, 4)), grid)


def test_one_hot_patch_lands_on_the_documented_token():
    net = build_network("PrimusTiny", 1, 1, NONCUBIC).eval()
    captured = {}
    net.eva.register_forward_pre_hook(lambda module, args: captured.__setitem__("tokens", args[0].detach()))
    base = torch.zeros(1, 1, *NONCUBIC)
    hot = base.clone()
    w, h, d = 1, 2, 3
    hot[..., 8 * w : 8 * w + 8, 8 * h : 8 * h + 8, 8 * d : 8 * d + 8] = 1.0
    with torch.no_grad():
        net(base)
        t0 = captured["tokens"]
        net(hot)
        t1 = captured["tokens"]
    changed = (t1 - t0).abs().sum(-1)[0].nonzero().flatten().tolist()
    assert changed == [w * 3 * 4 + h * 4 + d] == [23]
    # the mask utility maps that token back to the same cube
    token_mask = torch.zeros(1, 24, dtype=torch.bool)
    token_mask[0, 23] = True
    voxel = UnitMask(token_mask, (2, 3, 4), 8).voxels()
    assert voxel.shape == (1, 1, *NONCUBIC)
    torch.testing.assert_close(voxel.float(), hot)


def test_rope_rows_follow_the_same_token_order():
    net = build_network("PrimusTiny", 1, 1, NONCUBIC)
    sin = net.eva.rope.get_embed().chunk(2, dim=-1)[0]  # (24, head_dim): 3 axes x bands, interleaved
    positions = token_grid_positions((2, 3, 4))
    per_axis = sin.shape[1] // 3
    for axis in range(3):
        columns = sin[:, axis * per_axis : (axis + 1) * per_axis]
        same_rows = torch.cdist(columns, columns) < 1e-6
        same_coord = positions[:, axis][:, None] == positions[:, axis][None, :]
        assert torch.equal(same_rows, same_coord), f"RoPE axis {axis} is not the token grid axis {axis}"


# ----------------------------------------------------------------------------- Eva on a subset of tokens


def _tokens(net, batch=2):
    torch.manual_seed(1)
    return flatten_tokens(net.down_projection(torch.randn(batch, 1, *NONCUBIC)))


def test_eva_forward_tokens_without_indices_equals_eva():
    net = build_network("PrimusTiny", 1, 1, NONCUBIC).eval()
    tokens = _tokens(net)
    torch.testing.assert_close(eva_forward_tokens(net.eva, tokens), net.eva(tokens)[0])


def test_eva_forward_tokens_keeps_each_tokens_position():
    """A full permutation as keep_indices must only permute the output: pos_embed and RoPE follow the tokens."""
    net = build_network("PrimusTiny", 1, 1, NONCUBIC).eval()
    tokens = _tokens(net)
    full = net.eva(tokens)[0]
    perm = torch.stack([torch.randperm(24, generator=torch.Generator().manual_seed(s)) for s in (0, 1)])
    out = eva_forward_tokens(net.eva, tokens, perm)
    torch.testing.assert_close(out, full.gather(1, perm[..., None].expand(-1, -1, full.shape[-1])))


def test_eva_forward_tokens_subset_is_per_sample_and_differentiable():
    net = build_network("PrimusTiny", 1, 1, NONCUBIC)
    net.eval()
    tokens = _tokens(net)
    mask = draw_unit_mask(2, (2, 3, 4), 8, mask_ratio=0.75, generator=torch.Generator().manual_seed(0))
    keep = mask.keep_indices()
    assert keep.shape == (2, 6) and torch.all(keep[:, 1:] > keep[:, :-1])
    out = eva_forward_tokens(net.eva, tokens, keep)
    assert out.shape == (2, 6, 72)
    for b in range(2):  # batch handling: each sample alone gives the same rows
        torch.testing.assert_close(out[b : b + 1], eva_forward_tokens(net.eva, tokens[b : b + 1], keep[b : b + 1]))
    # dropped tokens do not influence kept ones: changing a dropped token leaves the output unchanged
    dropped = int(mask.masked[0].nonzero()[0])
    altered = tokens.clone()
    altered[0, dropped] += 5.0
    torch.testing.assert_close(eva_forward_tokens(net.eva, altered, keep), out)
    out.square().mean().backward()
    assert net.eva.pos_embed.grad.abs().sum() > 0


def test_eva_forward_tokens_rejects_wrong_grid():
    net = build_network("PrimusTiny", 1, 1, NONCUBIC)
    with pytest.raises(ValueError, match="built for 24"):
        eva_forward_tokens(net.eva, torch.zeros(1, 8, 72))


# ----------------------------------------------------------------------------- summary


def test_count_parameters_counts_shared_once():
    lin = nn.Linear(3, 4)
    model = nn.Sequential(lin, nn.ReLU(), lin)
    assert count_parameters(model) == 16
    lin.bias.requires_grad_(False)
    assert count_parameters(model, trainable_only=True) == 12


def test_count_flops_conv_and_aliased_modules():
    conv = nn.Conv3d(1, 2, 3, padding=1, bias=False)
    assert count_flops(conv, (4, 4, 4)).macs == 2 * 27 * 64

    class Aliased(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = conv
            self.alias = nn.Sequential(conv)  # same module registered twice, called once

        def forward(self, x):
            return self.conv(x)

    count = count_flops(Aliased(), (4, 4, 4))
    assert count.macs == 2 * 27 * 64 and count.flops == 2 * count.macs
    assert conv.weight.grad is None and not hasattr(conv, "total_ops")  # the original is untouched


def test_count_flops_counts_attention_and_survives_failures(monkeypatch):
    net = build_network("PrimusTiny", 1, 1, (16, 16, 16))
    attn = net.eva.blocks[0].attn
    # count_flops feeds zeros of shape (1, in_channels, *patch_size) = (1, N=8 tokens, C=72)
    with_attention = count_flops(attn, (72,), in_channels=8).macs
    monkeypatch.setattr(summary, "_count_attention", lambda module, inputs, output: None)
    without_attention = count_flops(attn, (72,), in_channels=8).macs
    assert with_attention - without_attention == 2 * 8 * 8 * 72  # QK^T and AV: 2 x N^2 x C
    assert without_attention >= 8 * 72 * 3 * 72 + 8 * 72 * 72  # qkv and output projections

    class Broken(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(2, 2)

        def forward(self, x):
            raise RuntimeError("custom op")

    assert count_flops(Broken(), (4, 4, 4)) is None


def test_count_flops_same_on_meta_built_and_real_networks():
    real = count_flops(build_network("ResEncTiny", 1, 1, (16, 16, 16)), (16, 16, 16))
    with torch.device("meta"):
        meta_net = build_network("ResEncTiny", 1, 1, (16, 16, 16))
    assert count_flops(meta_net, (16, 16, 16)) == real
    # two 3x3x3 convs of the 8-channel first stage alone: 2 x 8 x 8 x 27 x 16^3 MACs
    assert real.macs > 2 * 8 * 8 * 27 * 16**3


def test_format_summary_line():
    net = build_network("ResEncTiny", 1, 1, (16, 16, 16))
    line = format_summary("ResEncTiny", net, (16, 16, 16), 1)
    assert line.startswith("ResEncTiny: 319.42k parameters") and "16x16x16" in line and "MACs" in line
    assert "\n" not in line
    assert "FLOPs" not in format_summary("ResEncTiny", net, (16, 16, 16), 1, with_flops=False)
