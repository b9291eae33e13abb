"""The backbone interface of both families: features, masking in the family's own way, reconstruction, freezing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nnssl.architectures import ARCHITECTURES
from nnssl.architectures.primus import eva_forward_tokens, flatten_tokens, resampled_pos_embed, rope_table
from nnssl.backbones import FAMILIES, build_backbone

SIZE = (32, 32, 32)
FAMILY_ARCH = {"cnn": "ResEncTiny", "transformer": "PrimusTiny"}


def make(arch: str, reconstruction: bool = False, **kw):
    torch.manual_seed(0)
    return build_backbone(ARCHITECTURES.get(arch), 1, SIZE, reconstruction=reconstruction, **kw)


def test_every_registered_architecture_has_a_family() -> None:
    assert set(FAMILIES.names()) == set(FAMILY_ARCH)
    for name in ARCHITECTURES.names():
        assert ARCHITECTURES.get(name).family in FAMILIES, name


@pytest.mark.parametrize(("arch", "dim"), [("ResEncTiny", 8 + 16 + 32 + 64), ("PrimusTiny", 72)])
def test_features_pooled_dense_tokens(arch: str, dim: int) -> None:
    net = make(arch)
    x = torch.randn(2, 1, *SIZE)
    features = net.encode(x)
    assert features.pooled().shape == (2, dim) == (2, net.feature_dim)
    assert features.native_grid == (4, 4, 4)  # 1/8 of the input on both families
    assert features.dense().shape == (2, dim, 4, 4, 4)
    assert features.dense(2).shape == (2, dim, 2, 2, 2)
    assert features.tokens().shape == (2, 64, dim)
    if arch == "ResEncTiny":
        stages = net.network.encoder(x)
        assert len(features.maps) == 4
        torch.testing.assert_close(features.pooled()[:, :8], stages[0].mean(dim=(2, 3, 4)))
    else:
        tokens = eva_forward_tokens(net.network.eva, flatten_tokens(net.network.down_projection(x)))
        torch.testing.assert_close(features.tokens(), tokens)
        torch.testing.assert_close(features.pooled(), tokens.mean(1), rtol=1e-5, atol=1e-6)
    # the features depend on the encoder weights that are saved downstream
    features.pooled().sum().backward()
    key = "encoder.stem.convs.0.conv.weight" if arch == "ResEncTiny" else "down_projection.proj.weight"
    assert dict(net.network.named_parameters())[key].grad.abs().sum() > 0


def test_resenc_l_feature_dim_is_1120() -> None:
    net = build_backbone(ARCHITECTURES.get("ResEncL"), 1, (64, 64, 64))
    assert net.feature_dim == 1120


def _trainable(module) -> set[str]:
    return {n for n, p in module.named_parameters() if p.requires_grad}


def test_unused_parts_are_frozen() -> None:
    encoder_only, reconstructing = make("ResEncTiny"), make("ResEncTiny", reconstruction=True)
    frozen = {n for n, _ in encoder_only.network.named_parameters()} - _trainable(encoder_only.network)
    assert frozen and all(n.startswith(("decoder.stages", "decoder.transpconvs", "decoder.seg_layers")) for n in frozen)
    assert all(p.requires_grad for p in encoder_only.network.encoder.parameters())
    frozen = {n for n, _ in reconstructing.network.named_parameters()} - _trainable(reconstructing.network)
    last = len(reconstructing.network.decoder.seg_layers) - 1
    assert frozen and all(n.startswith("decoder.seg_layers.") and f".{last}." not in n for n in frozen)
    primus, primus_rec = make("PrimusTiny"), make("PrimusTiny", reconstruction=True)
    assert {n.split(".")[1] for n in set(dict(primus.named_parameters())) - _trainable(primus)} == {"up_projection"}
    assert all(p.requires_grad for p in primus_rec.parameters())
    assert primus_rec.has_mask_token and not primus.has_mask_token


@pytest.mark.parametrize("arch", ["ResEncTiny", "PrimusTiny"])
def test_masked_units_in_the_familys_unit(arch: str) -> None:
    net = make(arch, reconstruction=True)
    mask = net.draw_mask(3, 0.75, block_size=16)
    unit = 16 if arch == "ResEncTiny" else 8
    assert mask.unit_size == unit and mask.grid == tuple(32 // unit for _ in range(3))
    assert mask.masked.sum(1).tolist() == [int(0.75 * mask.num_units)] * 3
    with pytest.raises(ValueError, match="mask unit"):
        net.draw_mask(1, 0.75, block_size=16, input_size=(20, 32, 32))


@pytest.mark.parametrize("arch", ["ResEncTiny", "PrimusTiny"])
def test_reconstruction_never_sees_masked_voxels(arch: str) -> None:
    """Perturb only masked voxels: the prediction must not change (zeroed voxels / dropped tokens)."""
    net = make(arch, reconstruction=True).eval()
    x = torch.randn(2, 1, *SIZE)
    mask = net.draw_mask(2, 0.75, block_size=8)
    voxels = mask.voxels()
    with torch.no_grad():
        out = net.reconstruct(x, mask)
        altered = net.reconstruct(x + 10.0 * voxels * torch.randn_like(x), mask)
        unmasked = net.reconstruct(x + 10.0 * (1 - voxels) * torch.randn_like(x), mask)
    assert out.prediction.shape == x.shape
    torch.testing.assert_close(altered.prediction, out.prediction)
    assert not torch.allclose(unmasked.prediction, out.prediction)


def test_reconstruct_needs_a_reconstruction_build_and_replace_needs_a_mask_token() -> None:
    for arch in FAMILY_ARCH.values():
        net = make(arch)
        with pytest.raises(RuntimeError, match="reconstruction=True"):
            net.reconstruct(torch.randn(1, 1, *SIZE), net.draw_mask(1, 0.5))
    primus = make("PrimusTiny")
    with pytest.raises(RuntimeError, match="add_mask_token"):
        primus.encode(torch.randn(1, 1, *SIZE), primus.draw_mask(1, 0.5))
    primus.add_mask_token(0.02, truncated=True)
    with pytest.raises(ValueError, match="already has a mask token"):
        primus.add_mask_token(0.02)


def test_cnn_mask_zeroes_or_replaces_masked_voxels() -> None:
    net = make("ResEncTiny")
    seen = []
    net.network.encoder.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach()))
    x = torch.randn(1, 1, *SIZE) + 5.0
    mask = net.draw_mask(1, 0.5, block_size=8)
    voxels = mask.voxels()
    net.encode(x, mask)
    torch.testing.assert_close(seen[-1], x * (1 - voxels))
    net.add_mask_token(1.0)
    net.encode(x, mask)
    torch.testing.assert_close(seen[-1], x * (1 - voxels) + voxels * net.mask_token.detach())


def test_transformer_mask_token_lands_exactly_on_the_masked_patch_positions() -> None:
    net = make("PrimusTiny")
    net.add_mask_token(0.02, truncated=True)
    x = torch.zeros(1, 1, *SIZE)
    for t, (w, h, d) in enumerate(np.ndindex(4, 4, 4)):
        x[0, 0, 8 * w : 8 * w + 8, 8 * h : 8 * h + 8, 8 * d : 8 * d + 8] = t + 1.0
    masked = torch.tensor([0, 5, 17, 63])
    mask = net.draw_mask(1, counts=torch.tensor([4]))
    mask = type(mask)(torch.zeros_like(mask.masked).index_fill_(1, masked, True), mask.grid, mask.unit_size)
    seen = {}
    eva = net.network.eva
    handle = eva.pos_drop.register_forward_pre_hook(lambda m, args: seen.setdefault("x", args[0].detach()))
    with torch.no_grad():
        net.encode(x, mask)
    handle.remove()
    entered = seen["x"] - eva.pos_embed
    clean = flatten_tokens(net.network.down_projection(x)).detach()
    is_mask = torch.isclose(entered, net.mask_token.detach().expand_as(entered), atol=1e-6).all(dim=-1)[0]
    assert torch.equal(is_mask.nonzero().flatten(), masked)
    assert torch.allclose(entered[0, ~mask.masked[0]], clean[0, ~mask.masked[0]], atol=1e-5)


def test_transformer_runs_other_grids_with_resampled_positions() -> None:
    net = make("PrimusTiny")
    eva, build = net.network.eva, net.grid
    assert torch.equal(rope_table(eva, build), eva.rope.get_embed())
    assert torch.equal(resampled_pos_embed(eva.pos_embed, build, build), eva.pos_embed)
    small = resampled_pos_embed(eva.pos_embed, build, (2, 2, 2))
    assert small.shape == (1, 8, eva.pos_embed.shape[-1])
    assert rope_table(eva, (2, 2, 2)).shape == (8, eva.rope.get_embed().shape[-1])
    const = torch.ones_like(eva.pos_embed) * 0.3  # a constant stays constant after trilinear resampling
    assert torch.allclose(resampled_pos_embed(const, build, (2, 2, 2)), torch.full_like(small, 0.3))
    with torch.no_grad():
        x = torch.randn(2, 1, *SIZE)
        tokens = flatten_tokens(net.network.down_projection(x))
        torch.testing.assert_close(net.encode(x).tokens(), eva(tokens)[0], atol=1e-6, rtol=1e-5)
        local = net.encode(torch.randn(2, 1, 16, 16, 16))
    assert local.native_grid == (2, 2, 2) and local.tokens().shape == (2, 8, 72)


def test_context_decoders() -> None:
    cnn, primus = make("ResEncTiny"), make("PrimusTiny")
    features = cnn.encode(torch.randn(1, 1, *SIZE))
    assert cnn.context_decoder(2)(features) is features
    context = primus.context_decoder(2)
    features = primus.encode(torch.randn(1, 1, *SIZE))
    mixed = context(features)
    assert mixed.tokens().shape == features.tokens().shape and not torch.allclose(mixed.tokens(), features.tokens())
    assert sum(p.numel() for p in context.parameters()) > 0
