"""``reconstruct(x, scales=True)``: the decoder's intermediate maps on both families (GVSL, PCRLv2), with the same
prediction as without them, and the whole-input path at another input size (PCRLv2's local crops on Primus)."""

from __future__ import annotations

import pytest
import torch

from nnssl.architectures import ARCHITECTURES
from nnssl.backbones import build_backbone


@pytest.mark.parametrize("arch", ["ResEncTiny", "PrimusTiny"])
def test_scales_are_the_decoder_maps_and_leave_the_prediction_unchanged(arch: str) -> None:
    torch.manual_seed(0)
    net = build_backbone(ARCHITECTURES.get(arch), 1, (32, 32, 32), reconstruction=True, mask_token=False).eval()
    x = torch.randn(2, 1, 32, 32, 32)
    with torch.no_grad():
        plain = net.reconstruct(x)
        scaled = net.reconstruct(x, scales=True)
    assert plain.scales == []
    assert torch.equal(plain.prediction, scaled.prediction)
    assert [m.shape[1] for m in scaled.scales] == list(net.scale_channels())
    sides = [m.shape[2] for m in scaled.scales]
    assert sides == sorted(sides) and sides[-1] >= 16  # coarsest first, the last one at 1/1 (CNN) or 1/2 (Primus)
    # the output head reads the last scale: perturbing nothing else, the prediction follows from it alone
    assert all(m.shape[0] == 2 for m in scaled.scales)


@pytest.mark.parametrize("arch", ["ResEncTiny", "PrimusTiny"])
def test_whole_input_reconstruction_at_another_size(arch: str) -> None:
    torch.manual_seed(0)
    net = build_backbone(ARCHITECTURES.get(arch), 1, (32, 32, 32), reconstruction=True, mask_token=False).eval()
    with torch.no_grad():
        out = net.reconstruct(torch.randn(3, 1, 16, 16, 16), scales=True)
    assert out.prediction.shape == (3, 1, 16, 16, 16) and torch.isfinite(out.prediction).all()
    assert [m.shape[1] for m in out.scales] == list(net.scale_channels())
    assert out.scales[-1].shape[2] in (8, 16)


def test_masked_reconstruction_still_needs_the_build_grid_on_transformers() -> None:
    net = build_backbone(ARCHITECTURES.get("PrimusTiny"), 1, (32, 32, 32), reconstruction=True)
    mask = net.draw_mask(1, 0.5, input_size=(32, 32, 32))
    with pytest.raises(ValueError, match="built for"):
        net.reconstruct(torch.randn(1, 1, 16, 16, 16), mask)
