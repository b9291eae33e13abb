"""SimMIM on ResEnc (learned value at the input, U-Net decoder) and Primus (learned token at the patch embedding,
PatchDecode only): the L1 loss scores masked voxels only, the prediction ignores masked content, presets, keys."""

from __future__ import annotations

import math

import pytest
import torch

from nnssl.architectures import ARCHITECTURES, build_network
from nnssl.config import ConfigError
from nnssl.losses.reconstruction import masked_mse
from nnssl.methods import METHODS
from nnssl.methods.simmim import SimMIM, SimMIMConfig
from nnssl.presets import resolve_config

PATCH = (16, 16, 16)
#: (architecture, mask units per sample at PATCH): 4^3 cubes of 4 voxels on ResEncTiny, 2^3 tokens of 8 on PrimusTiny.
CASES = [("ResEncTiny", 64), ("PrimusTiny", 8)]


def _simmim(arch: str, **cfg) -> SimMIM:
    torch.manual_seed(0)
    return SimMIM(SimMIMConfig(**{"block_size": 4, **cfg}), ARCHITECTURES.get(arch), PATCH).eval()


def _run(method: SimMIM, x: torch.Tensor, add: str | None, monkeypatch) -> tuple[float, dict]:
    """Loss of one forward with the mask seeded; ``add`` shifts the prediction by 5 on visible or masked voxels."""
    captured: dict = {}
    draw, decode = method.net.draw_mask, method.net.decode

    def draw_and_keep(*args, **kwargs):
        captured["mask"] = draw(*args, **kwargs)
        return captured["mask"]

    def decode_and_perturb(features):
        prediction = decode(features)
        captured["prediction"] = prediction.detach().clone()
        if add is None:
            return prediction
        masked = captured["mask"].voxels()
        return prediction + 5.0 * (masked if add == "masked" else 1 - masked)

    monkeypatch.setattr(method.net, "draw_mask", draw_and_keep)
    monkeypatch.setattr(method.net, "decode", decode_and_perturb)
    torch.manual_seed(7)
    with torch.no_grad():
        loss = float(method({"image": x}).loss)
    monkeypatch.undo()
    return loss, captured


def test_registered() -> None:
    assert METHODS.get("SimMIM") is SimMIM and SimMIM.config_cls is SimMIMConfig


@pytest.mark.parametrize(("arch", "units"), CASES)
def test_loss_is_l1_on_masked_voxels_only(arch: str, units: int, monkeypatch) -> None:
    method = _simmim(arch)
    x = torch.randn(2, 1, *PATCH)
    base, captured = _run(method, x, None, monkeypatch)
    masked = captured["mask"].voxels()
    assert captured["mask"].masked.sum(dim=1).tolist() == [math.floor(0.75 * units)] * 2
    closed = float(((captured["prediction"] - x).abs() * masked).sum() / masked.sum())
    assert base == pytest.approx(closed, rel=1e-6)
    assert _run(method, x, "visible", monkeypatch)[0] == base
    assert _run(method, x, "masked", monkeypatch)[0] > base + 2.0


@pytest.mark.parametrize(("arch", "units"), CASES)
def test_prediction_ignores_the_content_of_masked_units(arch: str, units: int, monkeypatch) -> None:
    method = _simmim(arch)
    x = torch.randn(2, 1, *PATCH)
    _, first = _run(method, x, None, monkeypatch)
    masked = first["mask"].voxels()
    _, swapped = _run(method, x + masked * 3 * torch.randn_like(x), None, monkeypatch)
    assert torch.equal(first["mask"].masked, swapped["mask"].masked)
    assert float((first["prediction"] - swapped["prediction"]).abs().max()) == 0.0
    _, visible = _run(method, x + (1 - masked) * torch.randn_like(x), None, monkeypatch)  # control
    assert float((first["prediction"] - visible["prediction"]).abs().max()) > 1e-3


def test_cnn_masked_voxels_take_the_learned_value_at_the_input() -> None:
    method = _simmim("ResEncTiny")
    with torch.no_grad():
        method.net.mask_token.fill_(0.37)
    seen = {}
    handle = method.net.network.encoder.register_forward_pre_hook(lambda mod, args: seen.setdefault("x", args[0]))
    x = torch.randn(2, 1, *PATCH)
    torch.manual_seed(3)
    with torch.no_grad():
        method({"image": x})
    handle.remove()
    is_token = (seen["x"] == 0.37).reshape(2, 4, 4, 4, 4, 4, 4).all(dim=(2, 4, 6))
    assert is_token.flatten(1).sum(1).tolist() == [48, 48]  # floor(0.75 * 64) cubes per sample
    keep = ~is_token.repeat_interleave(4, 1).repeat_interleave(4, 2).repeat_interleave(4, 3).unsqueeze(1)
    assert torch.equal(seen["x"][keep], x[keep])


def test_primus_has_no_decoder_beyond_patch_decode_and_encodes_every_token() -> None:
    method = _simmim("PrimusTiny")
    assert method.net.decoder is None  # no Eva decoder blocks
    network = method.backbone()
    own = {n for n, _ in method.named_parameters()} - {f"net.network.{n}" for n, _ in network.named_parameters()}
    assert own == {"net.mask_token"}
    assert sum(p.numel() for p in method.parameters()) == sum(p.numel() for p in network.parameters()) + 72
    assert all(p.requires_grad for p in network.up_projection.parameters())  # PatchDecode is the decoder
    seen = {}
    handle = network.eva.blocks[0].register_forward_pre_hook(lambda mod, args: seen.setdefault("tokens", args[0]))
    with torch.no_grad():
        method({"image": torch.randn(2, 1, *PATCH)})
    handle.remove()
    assert tuple(seen["tokens"].shape) == (2, 8, 72)  # all 2^3 tokens, masked ones as the mask token
    assert len(list(network.eva.blocks)) == 2


@pytest.mark.parametrize(("arch", "units"), CASES)
def test_backbone_loads_strictly_into_a_fresh_downstream_network(arch: str, units: int) -> None:
    method = _simmim(arch)
    state = method.backbone().state_dict()
    fresh = build_network(arch, 1, 1, PATCH)
    fresh.load_state_dict(state, strict=True)
    assert list(state) == list(fresh.state_dict())
    assert all(p is not method.net.mask_token for p in method.backbone().parameters())  # method state, not saved


def test_mse_option_is_upstreams_masked_mse(monkeypatch) -> None:
    method = _simmim("PrimusTiny", loss="mse")
    x = torch.randn(2, 1, *PATCH)
    loss, captured = _run(method, x, None, monkeypatch)
    assert loss == pytest.approx(float(masked_mse(captured["prediction"], x, captured["mask"].voxels())), rel=1e-6)


def test_presets_and_validation() -> None:
    eva = resolve_config("SimMIMEvaTrainer")
    assert (eva.method, eva.architecture, eva.train.patch_size) == ("SimMIM", "PrimusM", (160, 160, 160))
    assert (eva.optim.name, eva.optim.lr, eva.optim.weight_decay, eva.optim.betas) == ("adamw", 3e-4, 5e-2, (0.9, 0.98))
    assert (eva.optim.warmup_epochs, eva.train.grad_clip, eva.train.batch_size) == (50, 1.0, 2)
    assert eva.method_cfg == SimMIMConfig() and eva.method_cfg.mask_ratio == 0.75
    assert resolve_config("SimMIMEvaTrainer_BS8").train.batch_size == 8
    cnn = resolve_config("SimMIMTrainer")
    assert (cnn.architecture, cnn.optim.name, cnn.train.grad_clip) == ("ResEncL", "sgd", 12.0)
    assert resolve_config("DemoSimMIM_PrimusTiny").architecture == "PrimusTiny"
    with pytest.raises(ConfigError, match=r"method\.loss"):
        resolve_config("SimMIMEvaTrainer", ["method.loss=huber"])
    with pytest.raises(ConfigError, match=r"method\.mask_ratio"):
        resolve_config("SimMIMTrainer", ["method.mask_ratio=0"])
