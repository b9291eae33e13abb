"""nnssl_convert_openmind on a miniature OpenMind-shaped download built in tmp_path."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnssl.cli.convert_openmind import build_parser, main
from nnssl.data.collection import Collection
from nnssl.data.conversion.openmind import build_openmind_collection, convert_openmind, parse_value
from nnssl.data.filters import OpenMindIQSFilter

COLUMNS = [
    "image_path", "modality", "anon_mask_path", "anat_mask_path", "unique_id", "image_quality_score",
    "age", "sex", "handedness", "derived_from", "is_brain_extract", "manufacturer", "repetition_time",
]  # fmt: skip

ROWS = [
    # image_path, modality, anon, anat, unique_id, iqs, age, sex, handedness, derived_from, brain_extract, manuf, tr
    ["ds000001/sub-01/ses-1/anat/sub-01_ses-1_T1w.nii.gz", "T1w",
     "ds000001/sub-01/ses-1/anat/sub-01_ses-1_T1w_anon.nii.gz",
     "ds000001/sub-01/ses-1/anat/sub-01_ses-1_T1w_anat.nii.gz",
     "ds000001_1", "1.5", "25", "F", "nan", "", "False", "Siemens", "2.3"],
    ["ds000001/sub-01/ses-1/fa_deriv/map.nii.gz", "FA", "", "", "ds000001_2", "2.0", "25", "F", "", "DWI", "", "", ""],
    ["ds000001/sub-01/ses-1/md_deriv/map.nii.gz", "MD", "", "", "ds000001_3", "NaN", "", "", "R", "DWI", "", "", ""],
    ["ds000001/sub-02/anat/sub-02_T2w.nii.gz", "T2w", "", "", "ds000001_4", "", "NaN", "M", "", "", "", "GE", ""],
    ["ds000001/sub-03/anat/sub-03_T2w.nii.gz", "T2w", "", "", "ds000001_5", "3.0", "40", "", "", "", "", "", ""],
    ["ds000002/sub-01/ses-2/anat/sub-01_ses-2_T1w.nii.gz", "T1w", "",
     "ds000002/sub-01/ses-2/anat/no_such_mask.nii.gz", "ds000002_1", "4.0", "", "", "", "", "", "", ""],
    ["ds000002/sub-01/anat/sub-01_FLAIR.nii.gz", "FLAIR", "", "", "ds000002_2", "2.5", "", "", "", "", "", "", ""],
]  # fmt: skip
MISSING_IMAGE = "ds000002/sub-01/anat/sub-01_FLAIR.nii.gz"
MISSING_MASK = "ds000002/sub-01/ses-2/anat/no_such_mask.nii.gz"


def _write_nifti(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(sitk.GetImageFromArray(np.full((8, 8, 8), value, dtype=np.int16)), str(path))


def make_openmind(root: Path) -> Path:
    """The release layout: openneuro_metadata.csv and OpenMind/<files>; one image and one mask left out."""
    images = root / "OpenMind"
    images.mkdir(parents=True)
    for i, row in enumerate(ROWS):
        for rel in (row[0], row[2], row[3]):
            if rel and rel not in (MISSING_IMAGE, MISSING_MASK):
                _write_nifti(images / rel, i)
    with open(root / "openneuro_metadata.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        writer.writerows(ROWS)
    return root


@pytest.fixture
def raw(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    raw = tmp_path / "raw"
    raw.mkdir()
    monkeypatch.setenv("nnssl_raw", str(raw))
    monkeypatch.delenv("nnssl_preprocessed", raising=False)
    return raw


def test_parse_value() -> None:
    assert [parse_value(t) for t in ("", " nan ", "NaN", "NA", "None", None)] == [None] * 6
    assert [parse_value(t) for t in ("25", "-3", "2.5", "True", "false", "0123", "M", "inf")] == [
        25, -3, 2.5, True, False, "0123", "M", None
    ]  # fmt: skip


def test_convert_writes_collection_under_nnssl_raw(raw: Path) -> None:
    root = make_openmind(raw / "download")
    result = convert_openmind(root, progress=False)
    json_path = raw / "Dataset745_OpenMind" / "pretrain_data.json"
    assert result.json_path == json_path
    doc = json.loads(json_path.read_text())
    assert (doc["collection_name"], doc["collection_index"]) == ("Dataset745_OpenMind", 745)
    assert list(doc["datasets"]) == ["ds000001", "ds000002"]

    ds1 = doc["datasets"]["ds000001"]
    assert ds1["dataset_index"] == "ds000001"
    assert sorted(ds1["subjects"]) == ["sub-01", "sub-02", "sub-03"]
    sub1 = ds1["subjects"]["sub-01"]
    # First row's info, NaN handedness dropped; the MD row adds the handedness the subject lacked.
    assert sub1["subject_info"] == {"age": 25, "sex": "F", "handedness": "R"}
    assert list(sub1["sessions"]) == ["ses-1"]
    images = sub1["sessions"]["ses-1"]["images"]
    assert [i["name"] for i in images] == ["sub-01_ses-1_T1w.nii.gz", "fa_map.nii.gz", "md_map.nii.gz"]
    t1 = images[0]
    prefix = "$nnssl_raw/download/OpenMind/ds000001/sub-01/ses-1/anat/"
    assert t1["image_path"] == prefix + "sub-01_ses-1_T1w.nii.gz"
    assert t1["associated_masks"] == {
        "anonymization_mask": prefix + "sub-01_ses-1_T1w_anon.nii.gz",
        "anatomy_mask": prefix + "sub-01_ses-1_T1w_anat.nii.gz",
    }
    assert t1["modality"] == "T1w"
    assert t1["image_info"] == {"is_brain_extract": False, "manufacturer": "Siemens", "repetition_time": 2.3}
    assert images[1]["image_info"] == {"derived_from": "DWI"}
    # No ses- folder -> ses-DEFAULT; NaN age dropped.
    sub2 = ds1["subjects"]["sub-02"]
    assert list(sub2["sessions"]) == ["ses-DEFAULT"]
    assert sub2["subject_info"] == {"sex": "M"}
    assert sub2["sessions"]["ses-DEFAULT"]["images"][0]["associated_masks"] == {
        "anonymization_mask": None,
        "anatomy_mask": None,
    }
    # IQS table: one row per (modality, derived_from); first non-missing score (T2w: sub-02 empty, sub-03 3.0).
    assert ds1["dataset_info"]["image_quality_score"] == [
        {"modality": "T1w", "derived_from": None, "image_quality_score": 1.5},
        {"modality": "FA", "derived_from": "DWI", "image_quality_score": 2.0},
        {"modality": "MD", "derived_from": "DWI", "image_quality_score": None},
        {"modality": "T2w", "derived_from": None, "image_quality_score": 3.0},
    ]
    ds2 = doc["datasets"]["ds000002"]
    # The FLAIR row's image is missing: skipped; its IQS still describes the dataset.
    assert list(ds2["subjects"]["sub-01"]["sessions"]) == ["ses-2"]
    assert ds2["subjects"]["sub-01"]["sessions"]["ses-2"]["images"][0]["associated_masks"]["anatomy_mask"] is None
    assert {r["modality"]: r["image_quality_score"] for r in ds2["dataset_info"]["image_quality_score"]} == {
        "T1w": 4.0,
        "FLAIR": 2.5,
    }

    openmind = root.resolve() / "OpenMind"
    lines = (raw / "Dataset745_OpenMind" / "missing_images.txt").read_text().splitlines()
    assert lines == [f"anatomy_mask\t7\t{openmind / MISSING_MASK}", f"image\t8\t{openmind / MISSING_IMAGE}"]
    assert [m.kind for m in result.missing] == ["anatomy_mask", "image"]

    collection = Collection.load(json_path)
    assert collection.num_images() == 6
    assert collection.missing_files() == []
    kept = [i.image_name for i in collection.iter_images(filters=[OpenMindIQSFilter(collection, 2.0)])]
    assert kept == ["sub-01_ses-1_T1w.nii.gz", "fa_map.nii.gz"]


def test_root_outside_nnssl_raw_gives_absolute_paths_and_stale_list_is_removed(raw: Path, tmp_path: Path) -> None:
    root = make_openmind(tmp_path / "elsewhere")
    stale = raw / "Dataset745_OpenMind" / "missing_images.txt"
    (root / "OpenMind" / MISSING_IMAGE).parent.mkdir(parents=True, exist_ok=True)
    _write_nifti(root / "OpenMind" / MISSING_IMAGE, 1)
    _write_nifti(root / "OpenMind" / MISSING_MASK, 1)
    stale.parent.mkdir(parents=True)
    stale.write_text("old\n")
    result = convert_openmind(root, progress=False)
    assert result.missing == [] and not stale.exists()
    first = next(result.collection.iter_images())
    doc = json.loads(result.json_path.read_text())
    written = doc["datasets"]["ds000001"]["subjects"]["sub-01"]["sessions"]["ses-1"]["images"][0]["image_path"]
    assert written == first.image_path == str(root / "OpenMind/ds000001/sub-01/ses-1/anat/sub-01_ses-1_T1w.nii.gz")
    assert Collection.load(result.json_path).num_images() == 7


def test_bad_rows_are_skipped_and_reported(tmp_path: Path) -> None:
    root = tmp_path / "om"
    (root / "OpenMind" / "ds1" / "sub-1").mkdir(parents=True)
    _write_nifti(root / "OpenMind" / "ds1" / "sub-1" / "a.nii.gz", 1)
    rows = [["ds1/sub-1/a.nii.gz", "T1w"], ["ds1/sub-1/a.nii.gz", "T1w"], ["ds1/a.nii.gz", "T1w"], ["", "T1w"]]
    with open(root / "openneuro_metadata.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([["image_path", "modality"], *rows])
    collection, missing, skipped = build_openmind_collection(root, progress=False)
    assert collection.num_images() == 1 and missing == []
    assert len(skipped) == 3
    assert skipped[0].startswith("line 3: image name 'a.nii.gz' repeats")
    assert skipped[1].startswith("line 4: image_path 'ds1/a.nii.gz' is not of the form")
    assert skipped[2] == "line 5: no image_path or modality"
    assert collection.datasets["ds1"].dataset_info == {}  # no IQS column -> no table


def test_no_existing_image_is_an_error_and_writes_nothing(raw: Path, tmp_path: Path) -> None:
    root = tmp_path / "om"
    (root / "OpenMind").mkdir(parents=True)
    with open(root / "openneuro_metadata.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([["image_path", "modality"], ["ds1/sub-1/a.nii.gz", "T1w"]])
    with pytest.raises(ValueError, match=r"None of the images .* \(1 missing, 0 malformed rows\); nothing was written"):
        convert_openmind(root, progress=False)
    assert not (raw / "Dataset745_OpenMind").exists()


def test_cli_main(raw: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    root = make_openmind(raw / "download")
    assert main(["--openmind_root_dir", str(root), "--no_progress"]) == 0
    assert (raw / "Dataset745_OpenMind" / "pretrain_data.json").is_file()

    assert main(["--openmind_root_dir", str(raw / "nope"), "--no_progress"]) == 1
    assert "openneuro_metadata.csv does not exist" in capsys.readouterr().err

    monkeypatch.delenv("nnssl_raw")
    assert main(["--openmind_root_dir", str(root), "--no_progress"]) == 1
    err = capsys.readouterr().err
    assert "nnssl_convert_openmind: error: The environment variable 'nnssl_raw' is not set" in err
    assert "Traceback" not in err


def test_cli_help_and_strict_parsing(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    assert "--openmind_root_dir" in capsys.readouterr().out
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["--openmind_root_dir", "x", "--unknown"])
    assert info.value.code == 2
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 2
