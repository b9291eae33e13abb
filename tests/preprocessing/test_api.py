"""End-to-end preprocessing of a small raw dataset: stored arrays, bad inputs, resume, parts, outputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnssl.data.case_store import case_is_complete, data_path, open_case, properties_path
from nnssl.data.collection import Collection
from nnssl.preprocessing.api import preprocess_dataset, preprocessed_images
from nnssl.preprocessing.cropping import bounding_box
from nnssl.serialization import load_json

DATASET = "Dataset042_PreTest"
CASES = Path(DATASET, "1", "sub-1")


def _case_stem(root: Path, session: str, stem: str, config: str = "onemmiso") -> Path:
    return root / DATASET / f"nnsslPlans_{config}" / CASES / session / stem


def test_end_to_end_onemmiso_with_bad_inputs(nnssl_env, raw_dataset):
    reports = preprocess_dataset(42, ["onemmiso"], num_processes=2, progress=False)
    report = reports["onemmiso"]
    pre = nnssl_env["nnssl_preprocessed"]
    reasons = {f["unique_id"].split("__")[-1]: f for f in report.failures}
    assert set(reasons) == {"nan.mha", "empty.nii.gz", "fourd.nii.gz", "broken.nii.gz", "gridimg.nii.gz"}
    assert "1 NaN" in reasons["nan.mha"]["reason"]
    assert "empty" in reasons["empty.nii.gz"]["reason"]
    assert "4D" in reasons["fourd.nii.gz"]["reason"] or "time" in reasons["fourd.nii.gz"]["reason"]
    assert reasons["broken.nii.gz"]["path"].endswith("broken.nii.gz")
    assert "not on the image's voxel grid" in reasons["gridimg.nii.gz"]["reason"]
    assert reasons["gridimg.nii.gz"]["path"].endswith("gridmask.nii.gz")
    assert report.num_processed == 3 and report.num_skipped == 0

    out_dir = pre / DATASET / "nnsslPlans_onemmiso"
    failures_file = load_json(out_dir / "preprocessing_failures.json")
    assert sorted(f["unique_id"] for f in failures_file) == sorted(f["unique_id"] for f in report.failures)
    assert all({"unique_id", "image_path", "path", "reason"} <= set(f) for f in failures_file)
    assert len(load_json(out_dir / "valid_imgs.json")) == 3

    # KmeansTest: 2 x 2 x 3 mm -> 1 mm, both masks present, stored distinct and aligned
    stem = _case_stem(pre, "ses-0", "kmeans")
    case = open_case(stem)
    props = case.properties
    assert props["spacing"] == [1, 1, 1]
    crop = props["shape_after_cropping_and_before_resampling"]
    expected = [round(s * sp) for s, sp in zip(crop, props["spacing_after_transpose"])]
    assert list(case.data.shape[1:]) == expected
    assert sorted(props["spacing_after_transpose"]) == [2.0, 2.0, 3.0]
    data = case.data[:]
    assert data.dtype == np.float32 and np.isfinite(data).all()
    anat, anon = case.masks["anatomy"][:], case.masks["anonymization"][:]
    assert anat.dtype == np.int8 and anon.dtype == np.int8
    assert anat.shape == data.shape and anon.shape == data.shape
    assert set(np.unique(anat)) == {0, 1} and set(np.unique(anon)) == {0, 1}
    # anonymization slab = the first 20 x-voxels (2 mm) of the raw file = first ~40 stored x-voxels (bug B1 check)
    bbox_x = props["bbox_used_for_cropping"][2]
    slab_end = (20 - bbox_x[0]) * 2
    assert anon[0, :, :, : slab_end - 2].all() and not anon[0, :, :, slab_end + 2 :].any()
    assert anat.mean() > 0.1 and not np.array_equal(anat, anon)
    raw_fg = data[0] > data[0].min() + 1e-3
    assert (anat[0].astype(bool) & raw_fg).sum() > 0.9 * anat.sum(), "anatomy lies inside the image foreground"
    # z-score statistics are those of the whole cropped box of the raw image (nnU-Net's use_mask_for_norm=False)
    raw = sitk.GetArrayFromImage(sitk.ReadImage(raw_dataset["kmeans.nii.gz"]["image_path"])).astype(np.float64)
    box = tuple(slice(lo, hi) for lo, hi in bounding_box(raw != 0))  # the same voxels in any axis order
    stats = props["normalization"]["channels"][0]
    assert props["normalization"]["use_mask_for_norm"] == [False]
    assert abs(stats["mean"] - raw[box].mean()) < 0.05 and abs(stats["std"] - raw[box].std()) < 0.05
    restored = data[0] * stats["std"] + stats["mean"]
    high, low = np.percentile(restored, [99.9, 0.1])  # cubic splines overshoot a little at sharp edges
    assert 0.7 * raw.max() < high < 1.1 * raw.max() and -0.1 * raw.max() < low < 0.05 * raw.max()
    assert props["normalization"]["scheme"] == "ZScoreNormalization"

    # orientation: the same volume stored RAS-like and LAS-like gives the same stored array
    ras = open_case(_case_stem(pre, "ses-1", "ras")).data[:]
    las = open_case(_case_stem(pre, "ses-2", "las")).data[:]
    np.testing.assert_allclose(ras, las, atol=1e-5)
    marker = np.unravel_index(np.argmax(ras[0]), ras[0].shape)
    assert marker[2] > ras.shape[3] // 2, "the marker stays on its side"

    # the collection of preprocessed cases and preprocessed_images
    written = load_json(pre / DATASET / "pretrain_data__onemmiso.json")
    text = str(written)
    assert "$nnssl_preprocessed/" in text and str(pre) not in text
    images = preprocessed_images(DATASET, "onemmiso")
    assert len(images) == 3 and all(i.image_path.endswith(".b2nd") for i in images)
    kmeans = next(i for i in images if i.stem == "kmeans")
    assert kmeans.anatomy_mask.endswith("kmeans__anat.b2nd")
    assert kmeans.anonymization_mask.endswith("kmeans__anon.b2nd")
    sessions = Collection.load(pre / DATASET / "pretrain_data__onemmiso.json").datasets["1"].subjects["sub-1"].sessions
    assert len(sessions) == 3


def test_resume_skips_finished_and_redoes_interrupted(nnssl_env, make_raw_dataset):
    make_raw_dataset(include_bad=False)
    pre = nnssl_env["nnssl_preprocessed"]
    preprocess_dataset(DATASET, ["noresample"], num_processes=1, progress=False)
    finished = _case_stem(pre, "ses-0", "kmeans", "noresample")
    interrupted = _case_stem(pre, "ses-1", "ras", "noresample")
    mtimes = {p: p.stat().st_mtime_ns for p in finished.parent.iterdir()}
    properties_path(interrupted).unlink()  # a write that stopped before its completion marker
    leftover = interrupted.parent / "ras.nnssl_tmp-0badc0de.b2nd"
    leftover.write_bytes(b"partial")
    assert not case_is_complete(interrupted)

    report = preprocess_dataset(DATASET, ["noresample"], num_processes=[1], progress=False)["noresample"]
    assert report.num_skipped == 2 and report.num_processed == 1 and not report.failures
    assert case_is_complete(interrupted) and not leftover.exists()
    assert {p: p.stat().st_mtime_ns for p in finished.parent.iterdir()} == mtimes, "finished case not rewritten"
    assert open_case(interrupted).properties["spacing"] == [1, 1, 1]


def test_parts_merge_and_noresample_keeps_grid(nnssl_env, make_raw_dataset):
    make_raw_dataset(include_bad=False, include_ct=True, transpose=(1, 0, 2))
    pre = nnssl_env["nnssl_preprocessed"]
    out_dir = pre / DATASET / "nnsslPlans_noresample"
    first = preprocess_dataset(DATASET, ["noresample"], num_processes=1, part=0, total_parts=2, progress=False)
    assert first["noresample"].num_images == 2
    assert not (out_dir / "valid_imgs.json").exists()
    assert not (pre / DATASET / "pretrain_data__noresample.json").exists()
    with pytest.raises(FileNotFoundError, match="nnssl_preprocess -d"):
        preprocessed_images(DATASET, "noresample")
    preprocess_dataset(DATASET, ["noresample"], num_processes=1, part=1, total_parts=2, progress=False)
    assert len(load_json(out_dir / "valid_imgs.json")) == 4
    assert len(preprocessed_images(DATASET, "noresample")) == 4
    # noresample: the KmeansTest case keeps its spacing, transposed by transpose_forward (1, 0, 2)
    case = open_case(_case_stem(pre, "ses-0", "kmeans", "noresample"))
    assert case.properties["spacing"] == [3, 2, 2]  # canonical [2, 3, 2]
    stored, background = case.data[0], -case.properties["normalization"]["channels"][0]["mean"]
    background /= case.properties["normalization"]["channels"][0]["std"]
    assert (np.abs(stored - background) > 1e-4).any()  # raw zeros sit at -mean/std
    assert abs(float(stored.mean())) < 1e-3 and abs(float(stored.std()) - 1) < 1e-3  # no resampling: exact z-score
    assert list(case.data.shape[1:]) == case.properties["shape_after_cropping_and_before_resampling"]
    # CT: z-scored like every modality (as nnU-Net's pre-trained fine-tuning does), no HU clipping by default
    ct = open_case(_case_stem(pre, "ses-3", "ct", "noresample"))
    norm = ct.properties["normalization"]
    assert norm["scheme"] == "ZScoreNormalization" and "clip" not in norm["channels"][0]
    values = ct.data[:]
    assert np.isfinite(values).all() and abs(float(values.mean())) < 1e-3 and abs(float(values.std()) - 1) < 1e-3


def test_num_processes_must_match_configurations(nnssl_env, raw_dataset):
    with pytest.raises(ValueError, match="one per configuration"):
        preprocess_dataset(DATASET, ["onemmiso", "noresample"], num_processes=[1, 2, 3], progress=False)
    assert not data_path(_case_stem(nnssl_env["nnssl_preprocessed"], "ses-0", "kmeans")).exists()
