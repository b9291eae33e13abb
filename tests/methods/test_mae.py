"""MAE on ResEnc (voxel blocks) and Primus (token dropping): mask counts, loss support, token order, keys."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from torch import nn

from nnssl.architectures import ARCHITECTURES, build_network
from nnssl.methods import METHODS
from nnssl.methods.mae import MAE, MAEConfig
from nnssl.transforms.masking import UnitMask

PATCH = (32, 32, 32)


def _mae(arch: str, patch=PATCH, **cfg) -> MAE:
    torch.manual_seed(0)
    return MAE(MAEConfig(**cfg), ARCHITECTURES.get(arch), patch)


def _visible_from_keep(keep: torch.Tensor, grid=(4, 4, 4), token: int = 8) -> torch.Tensor:
    """Voxel map of kept tokens computed independently: token t sits at np.unravel_index(t, grid) (w h d)."""
    out = torch.zeros(keep.shape[0], 1, *(g * token for g in grid))
    for b, row in enumerate(keep.tolist()):
        for t in row:
            w, h, d = np.unravel_index(t, grid)
            out[b, 0, w * token : (w + 1) * token, h * token : (h + 1) * token, d * token : (d + 1) * token] = 1
    return out


def test_registered() -> None:
    assert METHODS.get("MAE") is MAE and MAE.config_cls is MAEConfig


def test_cnn_masks_exactly_floor_r_blocks_per_sample() -> None:
    mae = _mae("ResEncTiny", block_size=8)
    seen = {}
    mae.net.network.encoder.register_forward_pre_hook(lambda mod, args: seen.setdefault("input", args[0]))
    x = torch.randn(3, 1, *PATCH)
    out = mae({"image": x})
    zero_blocks = (seen["input"] == 0).reshape(3, 4, 8, 4, 8, 4, 8).all(dim=(2, 4, 6))
    assert zero_blocks.flatten(1).sum(1).tolist() == [48, 48, 48]  # floor(0.75 * 64)
    assert out.metrics["masked_fraction"] == 0.75


def _cnn_loss(mae: MAE, x: torch.Tensor, add: str | None) -> tuple[float, torch.Tensor]:
    captured = {}

    def pre(mod, args):
        captured["visible"] = (args[0] != 0).float()

    def post(mod, args, output):
        if add is None:
            return output
        region = captured["visible"] if add == "visible" else 1 - captured["visible"]
        return output + 5.0 * region

    h1 = mae.net.network.encoder.register_forward_pre_hook(pre)
    h2 = mae.net.network.decoder.register_forward_hook(post)
    torch.manual_seed(123)
    loss = mae({"image": x}).loss
    h1.remove()
    h2.remove()
    return float(loss.detach()), captured["visible"]


def test_cnn_loss_ignores_visible_voxels() -> None:
    mae = _mae("ResEncTiny").eval()
    x = torch.randn(2, 1, *PATCH)
    base, visible = _cnn_loss(mae, x, None)
    assert visible.mean().item() == pytest.approx(0.25)
    assert _cnn_loss(mae, x, "visible")[0] == pytest.approx(base, rel=1e-6)
    assert _cnn_loss(mae, x, "masked")[0] > base + 1.0


def _primus_loss(mae: MAE, x: torch.Tensor, add: str | None) -> tuple[float, torch.Tensor]:
    captured = {}
    real = mae.net.draw_mask

    def draw_mask(*args, **kwargs):
        mask = real(*args, **kwargs)
        captured["keep"] = mask.keep_indices()
        return mask

    mae.net.draw_mask = draw_mask

    def post(mod, args, output):
        if add is None:
            return output
        visible = _visible_from_keep(captured["keep"])
        return output + 5.0 * (visible if add == "visible" else 1 - visible)

    handle = mae.net.network.up_projection.register_forward_hook(post)
    torch.manual_seed(321)
    loss = mae({"image": x}).loss
    handle.remove()
    del mae.net.draw_mask
    return float(loss.detach()), captured["keep"]


def test_primus_keeps_exactly_n_minus_floor_r_tokens_and_loss_ignores_visible_voxels() -> None:
    mae = _mae("PrimusTiny").eval()
    x = torch.randn(2, 1, *PATCH)
    base, keep = _primus_loss(mae, x, None)
    assert keep.shape == (2, 64 - 48)
    assert all(len(set(row.tolist())) == 16 for row in keep)
    assert _primus_loss(mae, x, "visible")[0] == pytest.approx(base, rel=1e-6)
    assert _primus_loss(mae, x, "masked")[0] > base + 1.0


class _CubeMean(nn.Module):
    """Token embedding = mean of the token's 8^3 cube in channel 0 (other channels 0)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = nn.functional.avg_pool3d(x, 8)
        return torch.cat([pooled, torch.zeros(x.shape[0], self.dim - 1, *pooled.shape[2:])], dim=1)


class _IdentityDecoder(nn.Module):
    def forward(self, seq: torch.Tensor) -> tuple[torch.Tensor, None]:
        return seq, None


class _CubeFill(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x[:, :1]
        for axis in (2, 3, 4):
            out = out.repeat_interleave(8, dim=axis)
        return out


def test_primus_token_order_and_loss_mask_alignment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hand-made input (cube value = token index in (w h d) order) through an identity encoder/decoder."""
    import nnssl.backbones.transformer as transformer

    mae = _mae("PrimusTiny")
    net = mae.net
    dim = net.mask_token.shape[-1]
    grid = (4, 4, 4)
    x = torch.zeros(1, 1, *PATCH)
    for t in range(64):
        w, h, d = np.unravel_index(t, grid)
        x[0, 0, w * 8 : (w + 1) * 8, h * 8 : (h + 1) * 8, d * 8 : (d + 1) * 8] = float(t)
    seen = {}

    def identity_encoder(eva, tokens, keep, grid=None, build_grid=None):
        seen["tokens"] = tokens
        return tokens.gather(1, keep.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))

    monkeypatch.setattr(transformer, "eva_forward_tokens", identity_encoder)
    monkeypatch.setattr(net.network, "down_projection", _CubeMean(dim))
    monkeypatch.setattr(net.network, "up_projection", _CubeFill())
    monkeypatch.setattr(net, "decoder", _IdentityDecoder())
    with torch.no_grad():
        net.mask_token.fill_(-1.0)
    keep = torch.tensor([[0, 1, 5, 17, 22, 40, 63]])
    masked = torch.ones(1, 64, dtype=torch.bool).index_fill_(1, keep[0], False)
    mask = UnitMask(masked, grid, 8)
    assert torch.equal(mask.keep_indices(), keep)
    recon = net.reconstruct(x, mask).prediction
    # the encoder saw token t at sequence position t
    assert seen["tokens"][0, :, 0].tolist() == [float(t) for t in range(64)]
    visible = _visible_from_keep(keep, grid)
    assert torch.equal(recon[visible == 1], x[visible == 1])  # kept tokens come back in place
    assert torch.all(recon[visible == 0] == -1)  # dropped tokens hold the mask token
    assert torch.equal(mask.voxels(), 1 - visible)  # loss mask = voxels of the dropped tokens


def test_primus_flattening_matches_downstream_dna_primus() -> None:
    mae = _mae("PrimusTiny")
    downstream = build_network("PrimusTiny", 1, 1, PATCH)
    downstream.load_state_dict(mae.backbone().state_dict())
    captured = {}

    def eva_spy(tokens):
        captured["tokens"] = tokens
        return tokens, None

    downstream.eva.forward = eva_spy
    x = torch.randn(1, 1, *PATCH)
    with torch.no_grad():
        downstream(x)
        ours = pmn_flatten(mae, x)
    assert torch.equal(ours, captured["tokens"])


def pmn_flatten(mae: MAE, x: torch.Tensor) -> torch.Tensor:
    from nnssl.architectures.primus import flatten_tokens

    return flatten_tokens(mae.net.network.down_projection(x))


@pytest.mark.parametrize("arch", ["ResEncTiny", "PrimusTiny"])
def test_backbone_keys_load_strictly_into_downstream_network(arch: str) -> None:
    mae = _mae(arch)
    downstream = build_network(arch, 1, 1, PATCH)
    downstream.load_state_dict(mae.backbone().state_dict(), strict=True)
    assert set(mae.backbone().state_dict()) == set(downstream.state_dict())
    prefix = "net.network."
    extra = {k.removeprefix("net.") for k in set(mae.state_dict()) - {prefix + k for k in downstream.state_dict()}}
    if arch == "PrimusTiny":
        # the MAE-only parts live beside the backbone, inside the method's state
        assert "mask_token" in extra and any(k.startswith("decoder.blocks.1") for k in extra)
        assert not any(k.startswith("network.") for k in extra)
    else:
        assert extra == set()


def test_primus_backward_reaches_encoder_decoder_and_mask_token() -> None:
    mae = _mae("PrimusTiny")
    mae({"image": torch.randn(2, 1, *PATCH)}).loss.backward()
    net = mae.net
    assert net.mask_token.grad is not None and net.mask_token.grad.abs().sum() > 0
    assert net.network.eva.pos_embed.grad.abs().sum() > 0
    assert net.decoder.blocks[0].attn.q_proj.weight.grad.abs().sum() > 0
    assert net.network.down_projection.proj.weight.grad.abs().sum() > 0


def test_anonymized_voxels_can_be_excluded() -> None:
    mae = _mae("ResEncTiny", ignore_anonymized=True).eval()
    x = torch.randn(1, 1, *PATCH)
    anon = torch.zeros(1, 1, *PATCH, dtype=torch.int8)
    anon[..., :16] = 1
    torch.manual_seed(0)
    out = mae({"image": x, "anonymization_mask": anon})
    assert out.metrics["masked_fraction"] < 0.75


def test_real_primus_m_forward_backward_at_32() -> None:
    mae = _mae("PrimusM")
    out = mae({"image": torch.randn(1, 1, *PATCH)})
    out.loss.backward()
    assert torch.isfinite(out.loss) and out.loss.dtype == torch.float32
    assert set(mae.backbone().state_dict()) == set(build_network("PrimusM", 1, 1, PATCH).state_dict())


@pytest.mark.slow
def test_real_resenc_l_forward_backward_at_64() -> None:
    mae = _mae("ResEncL", patch=(64, 64, 64))
    start = time.perf_counter()
    out = mae({"image": torch.randn(1, 1, 64, 64, 64)})
    out.loss.backward()
    assert torch.isfinite(out.loss) and time.perf_counter() - start < 120


def test_per_unit_normalized_targets() -> None:
    from nnssl.losses.reconstruction import per_unit_normalized

    x = torch.randn(2, 1, 16, 16, 16) * 3 + 7
    y = per_unit_normalized(x, 8)
    cubes = y.reshape(2, 1, 2, 8, 2, 8, 2, 8)
    torch.testing.assert_close(cubes.mean(dim=(3, 5, 7)), torch.zeros(2, 1, 2, 2, 2), atol=1e-5, rtol=0)
    torch.testing.assert_close(cubes.var(dim=(3, 5, 7), unbiased=False), torch.ones(2, 1, 2, 2, 2), rtol=1e-4, atol=0)


@pytest.mark.parametrize("arch", ["ResEncTiny", "PrimusTiny"])
def test_norm_pix_loss_ignores_affine_intensity_changes_of_a_masked_unit(arch: str) -> None:
    """The network never sees masked units; with normalised targets an affine change a*x+b of one masked unit leaves
    the loss unchanged, while the plain target moves it."""
    x = torch.randn(1, 1, *PATCH)

    def loss(method: MAE, image: torch.Tensor) -> float:
        torch.manual_seed(5)
        with torch.no_grad():
            return float(method({"image": image}).loss)

    for norm in (True, False):
        method = _mae(arch, block_size=8, norm_pix_loss=norm).eval()
        torch.manual_seed(5)
        mask = method.net.draw_mask(1, 0.75, 8)
        w, h, d = np.unravel_index(int(mask.masked[0].nonzero()[0]), mask.grid)
        u = mask.unit_size
        changed = x.clone()
        changed[..., w * u : (w + 1) * u, h * u : (h + 1) * u, d * u : (d + 1) * u] *= 3.0
        changed[..., w * u : (w + 1) * u, h * u : (h + 1) * u, d * u : (d + 1) * u] += 5.0
        if norm:
            assert loss(method, changed) == pytest.approx(loss(method, x), rel=1e-5)
        else:
            assert loss(method, changed) > loss(method, x) + 0.1


def test_weight_decay_on_weights_only_when_asked() -> None:
    mae = _mae("PrimusTiny")
    assert len(mae.param_groups(0.05)) == 1  # upstream: every parameter decayed
    mae = _mae("PrimusTiny", decay_norms_and_biases=False)
    decay, no_decay = mae.param_groups(0.05)
    names = {id(p): n for n, p in mae.named_parameters()}
    skipped = {names[id(p)] for p in no_decay["params"]}
    assert no_decay["weight_decay"] == 0.0 and decay["weight_decay"] == 0.05
    assert {"net.mask_token", "net.network.eva.pos_embed"} <= skipped
    assert any(n.endswith("norm.weight") for n in skipped) and any(n.endswith(".bias") for n in skipped)
    assert any("gamma" in n for n in skipped)  # Eva layer-scale
    assert all(p.ndim >= 2 and not names[id(p)].endswith("pos_embed") for p in decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == sum(p.requires_grad for p in mae.parameters())
