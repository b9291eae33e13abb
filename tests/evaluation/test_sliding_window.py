"""Sliding-window features: exact stitching, equality with one whole-volume pass, memory-free geometry."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nnssl.evaluation.encoder import FrozenEncoder
from nnssl.evaluation.sliding_window import gaussian_weight, sliding_window_features, window_starts

from .helpers import pooling_encoder, tiny_payload


def test_window_starts_cover_the_axis_on_multiples_of_the_stride():
    starts = window_starts(104, 32, 8, 0.5)  # padded lengths are multiples of the stride
    assert starts[0] == 0 and starts[-1] == 72 and all(s % 8 == 0 for s in starts)
    assert all(b - a <= 16 for a, b in zip(starts, starts[1:]))  # at most the step: no gap
    assert window_starts(32, 32, 8, 0.5) == [0]


def test_gaussian_weight_peaks_in_the_centre():
    w = gaussian_weight((5, 5, 5))
    assert float(w[2, 2, 2]) == 1.0 and float(w.min()) > 0 and float(w[0, 0, 0]) < 0.01


@pytest.mark.parametrize("overlap", [0.0, 0.5])
@pytest.mark.parametrize("gaussian", [True, False])
def test_local_encoder_is_stitched_exactly(overlap, gaussian):
    """Average pooling is local: every window agrees with the whole-volume pass, so blending changes nothing."""
    encoder = pooling_encoder(stride=4, window=(16, 16, 16))
    volume = torch.randn(1, 42, 37, 30)
    result = sliding_window_features(encoder, volume, stages=(0, 1), overlap=overlap, gaussian=gaussian)
    padded = torch.nn.functional.pad(volume, [0, 2, 0, 3, 0, 2])
    expected = torch.nn.functional.avg_pool3d(padded[None], 4)[0]
    assert result.stride == 4 and result.dense.shape == (2, 11, 10, 8)
    assert torch.allclose(result.dense[:1], expected, atol=1e-5)
    assert torch.allclose(result.dense[1:], 2 * expected, atol=1e-5)


@pytest.mark.parametrize("architecture", ["ResEncTiny", "PrimusTiny"])
def test_volume_of_one_window_equals_one_pass(architecture):
    encoder = FrozenEncoder.from_weights(tiny_payload(architecture))
    volume = torch.randn(1, 32, 32, 32)
    result = sliding_window_features(encoder, volume)
    (stage,) = result.stages
    direct = encoder.features(volume[None])[stage][0]
    assert torch.allclose(result.dense, direct, atol=1e-5)
    assert torch.allclose(result.embedding, encoder.pooled(encoder.features(volume[None]))[0], atol=1e-5)


def test_larger_volume_agrees_with_a_whole_volume_pass_away_from_window_borders():
    """ResEnc accepts the whole volume in one pass; windows with instance norm and zero padding differ from it only
    by their own statistics, so the stitched features stay close (and identical in shape and grid)."""
    encoder = FrozenEncoder.from_weights(tiny_payload("ResEncTiny"))
    torch.manual_seed(1)
    smooth = torch.nn.functional.avg_pool3d(torch.randn(1, 1, 64, 64, 64), 5, stride=1, padding=2)[0]
    result = sliding_window_features(encoder, smooth, stages=(2,), overlap=0.5)
    whole = encoder.copy_for_window((64, 64, 64)).features(smooth[None])[2][0]
    assert result.dense.shape == whole.shape
    correlation = np.corrcoef(result.dense.flatten().numpy(), whole.flatten().numpy())[0, 1]
    assert correlation > 0.9


def test_small_volume_is_padded_and_cropped_back():
    encoder = FrozenEncoder.from_weights(tiny_payload("ResEncTiny"))
    result = sliding_window_features(encoder, np.random.rand(1, 20, 33, 9).astype(np.float32), stages=(1, 3))
    assert result.stride == 2 and result.dense.shape == (16 + 64, 10, 17, 5)


def test_wrong_inputs_are_named():
    encoder = pooling_encoder()
    with pytest.raises(ValueError, match="C = 1 channels"):
        sliding_window_features(encoder, torch.zeros(2, 16, 16, 16))
    with pytest.raises(ValueError, match="stage 5 does not exist"):
        sliding_window_features(encoder, torch.zeros(1, 16, 16, 16), stages=(5,))
    with pytest.raises(ValueError, match="overlap"):
        sliding_window_features(encoder, torch.zeros(1, 16, 16, 16), overlap=1.0)
