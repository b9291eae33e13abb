"""Tests of the pure preprocessing steps: cropping, normalization, resampling, preprocess_case."""

from __future__ import annotations

import numpy as np
import pytest

from nnssl.preprocessing.cropping import bounding_box, crop_to_nonzero
from nnssl.preprocessing.normalization import NORMALIZERS, normalize
from nnssl.preprocessing.preprocess_case import PreprocessingError, normalization_scheme, preprocess_case
from nnssl.preprocessing.resampling import (
    RESAMPLERS,
    compute_new_shape,
    resample_data_or_seg_to_shape,
    separate_z_axis,
)

CONFIG = {
    "spacing": [1.0, 1.0, 1.0],
    "normalization_schemes": ["ZScoreNormalization"],
    "normalization_by_modality": {"CT": "CTNormalization"},
    "resampling_fn_data": "resample_data_or_seg_to_shape",
    "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
    "resampling_fn_mask": "resample_data_or_seg_to_shape",
    "resampling_fn_mask_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
}
PLAN = {"transpose_forward": [0, 1, 2]}


def test_crop_bbox_and_fill_holes():
    data = np.zeros((2, 20, 30, 25), dtype=np.float32)
    data[0, 3:11, 5:20, 2:9] = 1.0
    data[0, 5:8, 8:12, 4:6] = 0.0  # a hole inside the object
    data[1, 15, 25, 20] = 2.0  # second channel counts too
    mask = np.zeros((1, 20, 30, 25), dtype=np.int8)
    mask[0, 4, 6, 3] = 1
    cropped, masks, foreground, box = crop_to_nonzero(data, {"anatomy": mask})
    assert box == [[3, 16], [5, 26], [2, 21]]
    assert cropped.shape == (2, 13, 21, 19) and masks["anatomy"].shape == (1, 13, 21, 19)
    assert masks["anatomy"][0, 1, 1, 1] == 1 and masks["anatomy"].sum() == 1
    assert foreground[5 - 3 : 8 - 3, 8 - 5 : 12 - 5, 4 - 2 : 6 - 2].all(), "enclosed hole is foreground"
    assert bounding_box(np.zeros((3, 3, 3), bool)) is None
    with pytest.raises(ValueError, match="empty"):
        crop_to_nonzero(np.zeros((1, 4, 4, 4), np.float32))


def test_zscore_uses_whole_volume_statistics_unless_use_mask_for_norm():
    rng = np.random.default_rng(0)
    x = np.zeros((1, 30, 30, 30), dtype=np.float32)
    x[0, 5:25, 5:25, 5:25] = rng.normal(100.0, 15.0, size=(20, 20, 20))
    foreground = x[0] != 0
    out, stats = normalize(x, foreground, "ZScoreNormalization")  # default: nnU-Net's use_mask_for_norm = False
    assert abs(out[0].mean()) < 1e-4 and abs(out[0].std() - 1.0) < 1e-4
    assert abs(stats["channels"][0]["mean"] - x.mean()) < 1e-3 and stats["use_mask_for_norm"] == [False]
    assert np.allclose(out[0][~foreground], -x.mean() / x.std(), atol=1e-4)  # the same affine map everywhere
    masked, stats = normalize(x, foreground, "ZScoreNormalization", [True])
    assert abs(masked[0][foreground].mean()) < 1e-4 and abs(masked[0][foreground].std() - 1.0) < 1e-4
    assert abs(stats["channels"][0]["mean"] - 100.0) < 0.5 and abs(stats["channels"][0]["std"] - 15.0) < 0.5
    assert (masked[0][~foreground] == 0).all()  # nnU-Net leaves the background at 0
    flat, stats = normalize(np.full((1, 4, 4, 4), 7.0, np.float32), np.ones((4, 4, 4), bool), "ZScoreNormalization")
    assert np.isfinite(flat).all() and stats["channels"][0]["std"] == 0.0


def test_skull_stripped_background_sits_where_nnunet_puts_it():
    """Colin27 (skull-stripped): background at -0.85 sigma with nnU-Net's whole-volume z-score (was -4.76)."""
    from nnssl.data.demo import demo_asset
    from nnssl.imageio import read_image

    data, _ = read_image(demo_asset("ch2bet.nii.gz"))
    cropped, _, foreground, _ = crop_to_nonzero(data.astype(np.float32), {})
    out, _ = normalize(cropped, foreground, "ZScoreNormalization")
    background = float(out[0][~foreground].mean())
    raw = cropped[0].astype(np.float64)
    assert background == pytest.approx(-raw.mean() / raw.std(), abs=1e-4)
    assert background == pytest.approx(-0.85, abs=0.01)
    foreground_stats = -raw[foreground].mean() / raw[foreground].std()  # the former scheme
    assert foreground_stats == pytest.approx(-4.76, abs=0.01)


def test_ct_normalization_clips_hounsfield_window():
    x = np.array([-3000.0, -1000.0, 0.0, 500.0, 2000.0, 5000.0], dtype=np.float32).reshape(1, 6, 1, 1)
    foreground = np.ones((6, 1, 1), bool)
    out, stats = normalize(x, foreground, "CTNormalization")
    clipped = np.array([-1000.0, -1000.0, 0.0, 500.0, 2000.0, 2000.0])
    expected = (clipped - clipped.mean()) / clipped.std()
    np.testing.assert_allclose(out[0, :, 0, 0], expected, rtol=1e-5, atol=1e-5)
    assert stats["channels"][0]["clip"] == [-1000.0, 2000.0]
    assert {"ZScoreNormalization", "CTNormalization"} <= set(NORMALIZERS.names())
    assert normalization_scheme(CONFIG, "CT") == "CTNormalization"  # CONFIG asks for it per modality
    assert normalization_scheme(CONFIG, "T1w") == "ZScoreNormalization"
    assert normalization_scheme({"normalization_schemes": ["ZScoreNormalization"]}, "CT") == "ZScoreNormalization"


def test_resampling_shape_and_smooth_values():
    assert compute_new_shape([10, 20, 30], [2.0, 1.0, 0.5], [1.0, 1.0, 1.0]) == [20, 20, 15]
    z, y, x = np.meshgrid(np.arange(10), np.arange(12), np.arange(8), indexing="ij")
    ramp = (2.0 * z + 1.0 * y + 0.5 * x).astype(np.float32)[None]
    out = resample_data_or_seg_to_shape(ramp, [20, 12, 8], [2.0, 1.0, 1.0], [1.0, 1.0, 1.0])
    assert out.shape == (1, 20, 12, 8) and out.dtype == np.float32
    # a linear ramp stays linear in the interior (centre mapping: new i -> old (i + 0.5) / 2 - 0.5)
    zi = (np.arange(20) + 0.5) / 2 - 0.5
    np.testing.assert_allclose(out[0, 4:16, 3, 2], 2.0 * zi[4:16] + 3.0 + 1.0, atol=0.03)
    assert RESAMPLERS.get("resample_data_or_seg_to_shape") is resample_data_or_seg_to_shape


def test_mask_resampling_never_invents_labels():
    rng = np.random.default_rng(1)
    seg = rng.choice(np.array([0, 1, 3], dtype=np.int8), size=(1, 9, 11, 7))
    out = resample_data_or_seg_to_shape(seg, [17, 5, 13], [1, 2, 1], [0.5, 4.4, 0.55], is_seg=True, order=1)
    assert out.dtype == np.int8 and out.shape == (1, 17, 5, 13)
    assert set(np.unique(out)) <= {0, 1, 3}
    block = np.zeros((1, 8, 8, 8), np.int8)
    block[0, 2:6, 2:6, 2:6] = 1
    up = resample_data_or_seg_to_shape(block, [16, 16, 16], [1, 1, 1], [0.5, 0.5, 0.5], is_seg=True, order=1)
    # each side doubles (4 -> 8 voxels); only the 8 corner voxels drop out: trilinear weight 0.75^3 < 0.5
    assert up.sum() == 8**3 - 8
    assert up[0, 4:12, 4:12, 5:11].all() and not up[0, :3].any()


def test_anisotropic_uses_separate_low_resolution_axis():
    assert separate_z_axis([1.0, 1.0, 5.0], [1.0, 1.0, 1.0], None) == 2
    assert separate_z_axis([1.0, 1.0, 2.0], [1.0, 1.0, 1.0], None) is None
    assert separate_z_axis([1.0, 1.0, 2.0], [1.0, 1.0, 1.0], True) == 2
    assert separate_z_axis([4.0, 4.0, 1.0], [1.0, 1.0, 1.0], None) is None, "two low-res axes: one 3D pass"
    rng = np.random.default_rng(2)
    x = rng.normal(size=(1, 6, 6, 4)).astype(np.float32)
    out = resample_data_or_seg_to_shape(x, [6, 6, 20], [1.0, 1.0, 5.0], [1.0, 1.0, 1.0], order=3, order_z=0)
    # order 0 out of plane: every output slice is a copy of one input slice (nearest), no new values along z
    for k in range(20):
        src = min(int((k + 0.5) * 4 / 20), 3)
        np.testing.assert_allclose(out[0, :, :, k], x[0, :, :, src], atol=1e-5)
    cubic = resample_data_or_seg_to_shape(x, [6, 6, 20], [1.0, 1.0, 5.0], [1.0, 1.0, 1.0], force_separate_z=False)
    assert not np.allclose(cubic, out, atol=1e-3)


def _volume():
    data = np.zeros((1, 24, 20, 16), dtype=np.float32)
    rng = np.random.default_rng(3)
    data[0, 4:20, 3:17, 2:14] = rng.normal(50, 10, size=(16, 14, 12))
    anat = np.zeros((1, 24, 20, 16), dtype=np.int8)
    anat[0, 8:16, 6:14, 4:12] = 1
    anon = np.zeros((1, 24, 20, 16), dtype=np.int8)
    anon[0, 4:7] = 1
    return data, {"anatomy": anat, "anonymization": anon}


def test_preprocess_case_records_steps_and_resamples():
    data, masks = _volume()
    props = {"spacing": [2.0, 1.0, 1.5]}
    plan = {"transpose_forward": [2, 0, 1]}
    out, out_masks, out_props = preprocess_case(data, masks, props, CONFIG, plan, "T1w")
    assert out_props["shape_before_cropping"] == [16, 24, 20]
    assert out_props["bbox_used_for_cropping"] == [[2, 14], [4, 20], [3, 17]]
    assert out_props["shape_after_cropping_and_before_resampling"] == [12, 16, 14]
    assert out.shape == (1, 18, 32, 14) and out_props["spacing"] == [1.0, 1.0, 1.0]
    assert out_masks["anatomy"].shape == out.shape and out_masks["anatomy"].dtype == np.int8
    assert set(np.unique(out_masks["anatomy"])) == {0, 1}
    # anatomy (8 x 8 x 8 voxels of 2 x 1 x 1.5 mm) keeps its volume in mm^3 within a voxel layer
    assert abs(int(out_masks["anatomy"].sum()) - 8 * 8 * 8 * 3) < 0.2 * 768
    assert out_masks["anonymization"].sum() > 0 and not np.array_equal(out_masks["anatomy"], out_masks["anonymization"])
    assert out_props["normalization"]["scheme"] == "ZScoreNormalization"
    assert np.isfinite(out).all() and props == {"spacing": [2.0, 1.0, 1.5]}, "input properties untouched"


def test_noresample_and_bad_inputs():
    data, masks = _volume()
    cfg = dict(CONFIG, spacing=None)
    out, _, props = preprocess_case(data, masks, {"spacing": [2.0, 1.0, 1.5]}, cfg, PLAN, None)
    assert out.shape == (1, 16, 14, 12) and props["spacing"] == [2.0, 1.0, 1.5]
    bad = data.copy()
    bad[0, 0, 0, 0] = np.nan
    bad[0, 1, 0, 0] = np.inf
    with pytest.raises(PreprocessingError, match=r"1 NaN, 1 Inf"):
        preprocess_case(bad, None, {"spacing": [1, 1, 1]}, CONFIG, PLAN)
    with pytest.raises(PreprocessingError, match="empty"):
        preprocess_case(np.zeros_like(data), None, {"spacing": [1, 1, 1]}, CONFIG, PLAN)
    with pytest.raises(PreprocessingError, match="anatomy mask has shape"):
        preprocess_case(data, {"anatomy": masks["anatomy"][:, 1:]}, {"spacing": [1, 1, 1]}, CONFIG, PLAN)
