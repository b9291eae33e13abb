"""The backbone interface's whole-input reconstruction (``reconstruct(x)`` without a mask) and ``out_channels``:
what Models Genesis, VolumeFusion and the SwinUNETR pretext ask of both families."""

from __future__ import annotations

import pytest
import torch

from nnssl.architectures import ARCHITECTURES
from nnssl.architectures.adaptation_plan import build_adaptation_plan, verify_adaptation_plan
from nnssl.backbones import build_backbone

SIZE = (32, 32, 32)
PLANS = {"configurations": {"c": {"spacing": [1.0, 1.0, 1.0], "patch_size": list(SIZE)}}}


@pytest.mark.parametrize("arch", ["ResEncTiny", "PrimusTiny"])
@pytest.mark.parametrize("depth", [0, 1])
def test_whole_input_reconstruction_has_out_channels_and_trains_every_parameter(arch: str, depth: int) -> None:
    torch.manual_seed(0)
    net = build_backbone(
        ARCHITECTURES.get(arch), 1, SIZE, reconstruction=True, decoder_depth=depth, out_channels=5, mask_token=False
    )
    assert not net.has_mask_token
    out = net.reconstruct(torch.randn(2, 1, *SIZE))
    assert out.prediction.shape == (2, 5, *SIZE)
    assert out.features.pooled().shape == (2, net.feature_dim)
    out.prediction.square().mean().backward()
    assert [n for n, p in net.named_parameters() if p.requires_grad and p.grad is None] == []
    plan = build_adaptation_plan(ARCHITECTURES.get(arch), PLANS, "c", SIZE, 1)
    verify_adaptation_plan(plan, net.network.state_dict())


def test_transformer_without_mask_token_refuses_a_mask() -> None:
    net = build_backbone(ARCHITECTURES.get("PrimusTiny"), 1, SIZE, reconstruction=True, mask_token=False)
    mask = net.draw_mask(1, 0.5)
    with pytest.raises(RuntimeError, match="mask_token=True"):
        net.reconstruct(torch.randn(1, 1, *SIZE), mask)


@pytest.mark.parametrize("arch", ["ResEncTiny", "PrimusTiny"])
def test_unmasked_reconstruction_equals_reconstruction_with_an_empty_mask(arch: str) -> None:
    torch.manual_seed(0)
    net = build_backbone(ARCHITECTURES.get(arch), 1, SIZE, reconstruction=True).eval()
    x = torch.randn(2, 1, *SIZE)
    empty = net.draw_mask(2, counts=torch.zeros(2, dtype=torch.long))
    with torch.no_grad():
        torch.testing.assert_close(net.reconstruct(x).prediction, net.reconstruct(x, empty).prediction)
