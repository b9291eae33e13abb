"""pretrain_data.json: schema round trip, $VAR paths, validation messages, missing files, filters."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pytest

from nnssl.data.collection import (
    AssociatedMasks,
    Collection,
    CollectionValidationError,
    Dataset,
    Image,
    IndependentImage,
    MissingFilesError,
    Session,
    Subject,
    expand_path,
    image_stem,
    relativize_path,
    validate_collection_dict,
)
from nnssl.data.filters import ModalityFilter, OpenMindIQSFilter
from nnssl.paths import MissingEnvironmentVariable


def _document() -> dict:
    """An upstream-style document: every key present, $VAR paths, two datasets (one with an int index)."""
    return {
        "collection_index": 745,
        "collection_name": "Dataset745_Test",
        "datasets": {
            "ds1": {
                "dataset_index": "ds1",
                "name": "first",
                "dataset_info": {
                    "image_quality_score": [
                        {"modality": "T1w", "derived_from": None, "image_quality_score": 1.5},
                        {"modality": "T2w", "derived_from": None, "image_quality_score": 3.0},
                        {"modality": "MD", "derived_from": "DWI", "image_quality_score": 2.0},
                    ]
                },
                "subjects": {
                    "sub-01": {
                        "subject_id": "sub-01",
                        "subject_info": {"age": 25, "sex": "F"},
                        "sessions": {
                            "ses-1": {
                                "session_id": "ses-1",
                                "session_info": None,
                                "images": [
                                    {
                                        "name": "sub-01_T1w.nii.gz",
                                        "image_path": "$nnssl_raw/D/ds1/sub-01/ses-1/anat/sub-01_T1w.nii.gz",
                                        "modality": "T1w",
                                        "image_info": {"manufacturer": "X"},
                                        "associated_masks": {
                                            "anonymization_mask": "$nnssl_raw/D/ds1/sub-01/ses-1/anat/anon.nii.gz",
                                            "anatomy_mask": "$nnssl_raw/D/ds1/sub-01/ses-1/anat/anat.nii.gz",
                                        },
                                    },
                                    {
                                        "name": "dwi_MD.nii.gz",
                                        "image_path": "$nnssl_raw/D/ds1/sub-01/ses-1/dwi/MD.nii.gz",
                                        "modality": "MD",
                                        "image_info": {"derived_from": "DWI"},
                                        "associated_masks": None,
                                    },
                                ],
                            }
                        },
                    },
                    "sub-02": {
                        "subject_id": "sub-02",
                        "subject_info": None,
                        "sessions": {
                            "ses-DEFAULT": {
                                "session_id": "ses-DEFAULT",
                                "session_info": {"note": "x"},
                                "images": [
                                    {
                                        "name": "sub-02_T2w.nii.gz",
                                        "image_path": "$nnssl_raw/D/ds1/sub-02/sub-02_T2w.nii.gz",
                                        "modality": "T2w",
                                        "image_info": None,
                                        "associated_masks": {"anonymization_mask": None, "anatomy_mask": None},
                                    }
                                ],
                            }
                        },
                    },
                },
            },
            "7": {
                "dataset_index": 7,
                "name": None,
                "dataset_info": None,
                "subjects": {
                    "s": {
                        "subject_id": "s",
                        "subject_info": None,
                        "sessions": {
                            "1": {
                                "session_id": 1,
                                "session_info": None,
                                "images": [
                                    {
                                        "name": "ct.mha",
                                        "image_path": "/abs/elsewhere/ct.mha",
                                        "modality": "CT",
                                        "image_info": None,
                                        "associated_masks": None,
                                    }
                                ],
                            }
                        },
                    }
                },
            },
        },
    }


@pytest.fixture
def raw_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    raw = tmp_path / "raw"
    raw.mkdir()
    monkeypatch.setenv("nnssl_raw", str(raw))
    monkeypatch.setenv("nnssl_preprocessed", str(tmp_path / "pp"))
    return raw


def test_round_trip_keeps_document_and_var_paths(raw_env: Path, tmp_path: Path) -> None:
    doc = _document()
    src = tmp_path / "in.json"
    src.write_text(json.dumps(doc))
    collection = Collection.load(src)
    # Paths stay as written; the int dataset index and int session id survive.
    img = collection.datasets["ds1"].subjects["sub-01"].sessions["ses-1"].images[0]
    assert img.image_path.startswith("$nnssl_raw/")
    assert img.associated_masks == AssociatedMasks(
        anonymization_mask="$nnssl_raw/D/ds1/sub-01/ses-1/anat/anon.nii.gz",
        anatomy_mask="$nnssl_raw/D/ds1/sub-01/ses-1/anat/anat.nii.gz",
    )
    assert collection.datasets["7"].dataset_index == 7
    assert type(collection.datasets["ds1"].subjects["sub-01"].subject_info) is dict
    assert collection.to_dict() == doc
    out = tmp_path / "out.json"
    collection.save(out)
    assert json.loads(out.read_text()) == doc
    assert Collection.load(out).to_dict() == doc


def test_round_trip_keeps_left_out_optional_keys_left_out(tmp_path: Path) -> None:
    doc = {
        "collection_index": "c",
        "collection_name": "Dataset001_Min",
        "datasets": {
            "d": {
                "dataset_index": "d",
                "subjects": {
                    "s": {
                        "sessions": {
                            "t": {"images": [{"name": "a.nii", "image_path": "/x/a.nii", "modality": "T1w"}]},
                            "u": {
                                "images": [
                                    {
                                        "name": "b.nii",
                                        "image_path": "/x/b.nii",
                                        "modality": "T1w",
                                        "associated_masks": {"anatomy_mask": "/x/m.nii"},
                                    }
                                ]
                            },
                        }
                    }
                },
            }
        },
    }
    collection = Collection.from_dict(copy.deepcopy(doc))
    masks = collection.datasets["d"].subjects["s"].sessions["u"].images[0].associated_masks
    assert masks == AssociatedMasks(anonymization_mask=None, anatomy_mask="/x/m.nii")
    assert collection.to_dict() == doc
    # A value set after loading is written even though the source left the key out.
    collection.datasets["d"].subjects["s"].sessions["t"].images[0].image_info = {"k": 1}
    assert collection.to_dict()["datasets"]["d"]["subjects"]["s"]["sessions"]["t"]["images"][0]["image_info"] == {
        "k": 1
    }


def test_expand_and_relativize_paths(raw_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert expand_path("$nnssl_raw/a/$nnssl_raw/b") == f"{raw_env}/a/$nnssl_raw/b"
    assert expand_path("${nnssl_raw}/a") == f"{raw_env}/a"
    assert expand_path("$nnssl_raw") == str(raw_env)
    assert expand_path("/plain/path") == "/plain/path"
    assert relativize_path(f"{raw_env}/D/x.nii.gz") == "$nnssl_raw/D/x.nii.gz"
    assert relativize_path(f"{tmp_path}/pp/D/x.b2nd") == "$nnssl_preprocessed/D/x.b2nd"
    assert relativize_path(f"{raw_env}2/x.nii") == f"{raw_env}2/x.nii"  # same prefix, other folder
    assert relativize_path("/elsewhere/x.nii") == "/elsewhere/x.nii"
    assert relativize_path("$nnssl_raw/y") == "$nnssl_raw/y"
    # Nested roots: the longest wins.
    monkeypatch.setenv("nnssl_preprocessed", str(raw_env / "pp"))
    assert relativize_path(f"{raw_env}/pp/x") == "$nnssl_preprocessed/x"
    monkeypatch.delenv("nnssl_raw")
    with pytest.raises(MissingEnvironmentVariable, match=r"\$nnssl_raw/a.*export nnssl_raw="):
        expand_path("$nnssl_raw/a")


def test_save_relativizes_absolute_paths(raw_env: Path, tmp_path: Path) -> None:
    collection = Collection(collection_index=1, collection_name="Dataset001_X")
    session = Session(session_id="ses-DEFAULT")
    session.images.append(
        Image(
            name="a.nii.gz",
            image_path=str(raw_env / "Dataset001_X" / "a.nii.gz"),
            modality="T1w",
            associated_masks=AssociatedMasks(anatomy_mask=str(raw_env / "m.nii.gz")),
        )
    )
    collection.datasets["d"] = Dataset(
        dataset_index="d", subjects={"s": Subject("s", sessions={"ses-DEFAULT": session})}
    )
    out = tmp_path / "p.json"
    collection.save(out)
    image = json.loads(out.read_text())["datasets"]["d"]["subjects"]["s"]["sessions"]["ses-DEFAULT"]["images"][0]
    assert image["image_path"] == "$nnssl_raw/Dataset001_X/a.nii.gz"
    assert image["associated_masks"] == {"anonymization_mask": None, "anatomy_mask": "$nnssl_raw/m.nii.gz"}
    collection.save(out, relative_paths=False)
    image = json.loads(out.read_text())["datasets"]["d"]["subjects"]["s"]["sessions"]["ses-DEFAULT"]["images"][0]
    assert image["image_path"] == str(raw_env / "Dataset001_X" / "a.nii.gz")


def test_validation_reports_every_problem_with_its_location(tmp_path: Path) -> None:
    doc = _document()
    ds1 = doc["datasets"]["ds1"]
    images = ds1["subjects"]["sub-01"]["sessions"]["ses-1"]["images"]
    del images[0]["image_path"]  # missing key
    images[1]["modality"] = 3  # wrong type
    images[1]["extra"] = True  # unknown key
    images[1]["associated_masks"] = {"anatomy_mask": None, "brain_mask": "x"}  # partial dict ok, unknown key not
    images.append(dict(images[1], extra=None))  # duplicate name
    doc["datasets"]["7"]["dataset_index"] = 8  # key != str(index)
    ds1["subjects"]["sub-02"]["subject_id"] = "sub-03"
    doc["collection_name"] = None

    src = tmp_path / "bad.json"
    src.write_text(json.dumps(doc))
    with pytest.raises(CollectionValidationError) as info:
        Collection.load(src)
    err = info.value
    base = 'datasets["ds1"].subjects["sub-01"].sessions["ses-1"].images'
    expected = [
        f"{base}[0].image_path: missing key",
        f"{base}[1].modality: wrong type: expected str, got number",
        f"{base}[1].extra: unknown key",
        f"{base}[1].associated_masks.brain_mask: unknown key",
        f"{base}[2].name: duplicate image name 'dwi_MD.nii.gz'",
        "datasets[\"7\"].dataset_index: is 8 but the dataset's key is '7'",
        'datasets["ds1"].subjects["sub-02"].subject_id: is \'sub-03\'',
        "collection_name: wrong type: expected str, got null",
    ]
    for text in expected:
        assert sum(text in p for p in err.problems) >= 1, (text, err.problems)
        assert text in str(err)
    assert str(src) in str(err)
    assert not any("associated_masks.anonymization_mask" in p for p in err.problems)  # partial mask dict is fine
    # images[2] is a copy of images[1]: its 3 problems repeat, plus the duplicate name -> 11 in all.
    assert len(err.problems) == len(validate_collection_dict(doc)) == 11


def test_validation_duplicate_json_keys_case_collisions_and_bad_names(tmp_path: Path) -> None:
    text = (
        '{"collection_index": 1, "collection_name": "C", "datasets": {"d": {"dataset_index": "d", "subjects": '
        '{"s": {"sessions": {}}, "s": {"sessions": {"x": {"images": ['
        '{"name": "a.nii.gz", "image_path": "/a.nii.gz", "modality": "T1w"},'
        '{"name": "a.nrrd", "image_path": "/a.nrrd", "modality": "T1w"}]}, '
        '"..": {"images": []}}}}}}}'
    )
    path = tmp_path / "dup.json"
    path.write_text(text)
    with pytest.raises(CollectionValidationError) as info:
        Collection.load(path)
    problems = info.value.problems
    assert any(p.startswith('datasets["d"].subjects["s"]: duplicate subject id') for p in problems), problems
    assert any("images[1].name: 'a.nrrd' has the same stem 'a'" in p for p in problems), problems
    assert any(p.startswith('datasets["d"].subjects["s"].sessions[".."]: session id') for p in problems), problems
    assert len(problems) == 3
    assert validate_collection_dict([1]) == ["<document>: wrong type: expected object, got array"]
    assert validate_collection_dict({}) == [
        "collection_index: missing key",
        "collection_name: missing key",
        "datasets: missing key",
    ]


def test_hand_built_collection_is_validated_on_save(tmp_path: Path) -> None:
    collection = Collection(collection_index=1, collection_name="C")
    collection.datasets["wrong"] = Dataset(dataset_index="d")
    with pytest.raises(CollectionValidationError, match=r'datasets\["wrong"\].dataset_index'):
        collection.save(tmp_path / "x.json")
    collection.datasets = {"d": Dataset("d", subjects={"s": Subject("s", sessions={"t": Session("t")})})}
    collection.datasets["d"].subjects["s"].sessions["t"].images.append(Image("a.nii", Path("/a.nii"), "T1w"))
    with pytest.raises(
        CollectionValidationError, match=r"images\[0\].image_path: wrong type: expected str, got PosixPath"
    ):
        collection.save(tmp_path / "x.json")
    assert not (tmp_path / "x.json").exists()


def test_iter_images_independent_image_fields(raw_env: Path) -> None:
    collection = Collection.from_dict(_document())
    images = list(collection.iter_images())
    assert len(images) == collection.num_images() == 4
    first = images[0]
    assert first == IndependentImage(
        collection_name="Dataset745_Test",
        collection_index=745,
        dataset_index="ds1",
        subject_id="sub-01",
        session_id="ses-1",
        image_name="sub-01_T1w.nii.gz",
        image_path=f"{raw_env}/D/ds1/sub-01/ses-1/anat/sub-01_T1w.nii.gz",
        modality="T1w",
        image_info={"manufacturer": "X"},
        subject_info={"age": 25, "sex": "F"},
        anatomy_mask=f"{raw_env}/D/ds1/sub-01/ses-1/anat/anat.nii.gz",
        anonymization_mask=f"{raw_env}/D/ds1/sub-01/ses-1/anat/anon.nii.gz",
    )
    assert first.unique_id == "Dataset745_Test__ds1__sub-01__ses-1__sub-01_T1w.nii.gz"
    assert first.subject_uid == "Dataset745_Test__ds1__sub-01"
    assert first.stem == "sub-01_T1w"
    assert first.relative_case_path == Path("Dataset745_Test", "ds1", "sub-01", "ses-1", "sub-01_T1w")
    ct = images[-1]
    assert (ct.dataset_index, ct.session_id, ct.stem, ct.anatomy_mask) == ("7", "1", "ct", None)
    assert IndependentImage.from_dict(json.loads(json.dumps(first.to_dict()))) == first
    names = ("a.nii.gz", "a.nii", "a.nrrd", "a.mha", "a.mhd", "a.nhdr", "a.tif.gz", "a.b2nd")
    assert [image_stem(n) for n in names] == ["a", "a", "a", "a", "a", "a", "a.tif", "a.b2nd"]


def test_missing_files_lists_all_images_and_masks(raw_env: Path) -> None:
    collection = Collection.from_dict(_document())
    present = raw_env / "D/ds1/sub-01/ses-1/anat/anon.nii.gz"
    present.parent.mkdir(parents=True)
    present.write_bytes(b"x")
    missing = collection.missing_files()
    base = 'datasets["ds1"].subjects["sub-01"].sessions["ses-1"].images'
    assert missing == [
        f"{base}[0].image_path: {raw_env}/D/ds1/sub-01/ses-1/anat/sub-01_T1w.nii.gz does not exist",
        f"{base}[0].associated_masks.anatomy_mask: {raw_env}/D/ds1/sub-01/ses-1/anat/anat.nii.gz does not exist",
        f"{base}[1].image_path: {raw_env}/D/ds1/sub-01/ses-1/dwi/MD.nii.gz does not exist",
        f'datasets["ds1"].subjects["sub-02"].sessions["ses-DEFAULT"].images[0].image_path: '
        f"{raw_env}/D/ds1/sub-02/sub-02_T2w.nii.gz does not exist",
        'datasets["7"].subjects["s"].sessions["1"].images[0].image_path: /abs/elsewhere/ct.mha does not exist',
    ]
    with pytest.raises(MissingFilesError) as info:
        collection.verify_files_exist()
    assert info.value.missing == missing
    assert "5 file(s)" in str(info.value)
    assert all(m in str(info.value) for m in missing)


def test_with_image_paths_maps_and_drops(raw_env: Path, tmp_path: Path) -> None:
    collection = Collection.from_dict(_document())
    before = collection.to_dict()
    uid = "Dataset745_Test__ds1__sub-01__ses-1__sub-01_T1w.nii.gz"
    pp = tmp_path / "pp"
    new = collection.with_image_paths({uid: (f"{pp}/a.b2nd", f"{pp}/a__anat.b2nd", None)})
    assert collection.to_dict() == before  # source untouched
    assert list(new.datasets) == ["ds1"] and list(new.datasets["ds1"].subjects) == ["sub-01"]
    (image,) = list(new.iter_images())
    assert image.unique_id == uid
    assert (image.image_path, image.anatomy_mask, image.anonymization_mask) == (
        f"{pp}/a.b2nd",
        f"{pp}/a__anat.b2nd",
        None,
    )
    assert new.datasets["ds1"].dataset_info == collection.datasets["ds1"].dataset_info
    written = new.to_dict(relative_paths=True)["datasets"]["ds1"]["subjects"]["sub-01"]["sessions"]["ses-1"]
    assert written["images"][0]["image_path"] == "$nnssl_preprocessed/a.b2nd"
    with pytest.raises(KeyError, match="name no image"):
        collection.with_image_paths({"nope": ("/x", None, None)})


def test_modality_filter(raw_env: Path) -> None:
    collection = Collection.from_dict(_document())
    kept = [i.modality for i in collection.iter_images(filters=[ModalityFilter(["T1w", "CT"])])]
    assert kept == ["T1w", "CT"]
    assert [i.modality for i in collection.iter_images(filters=[ModalityFilter("T2w")])] == ["T2w"]
    with pytest.raises(ValueError, match="at least one modality"):
        ModalityFilter([])


def test_iqs_filter_thresholds_unknowns_and_does_not_mutate(raw_env: Path) -> None:
    collection = Collection.from_dict(_document())
    before = collection.to_dict()
    f25 = OpenMindIQSFilter(collection, threshold=2.5)
    f35 = OpenMindIQSFilter(collection, threshold=3.5, keep_unknown=True)  # second filter on the same collection
    assert collection.to_dict() == before
    assert [i.image_name for i in collection.iter_images(filters=[f25])] == ["sub-01_T1w.nii.gz", "dwi_MD.nii.gz"]
    # T2w scores 3.0; CT of dataset 7 has no table -> kept only with keep_unknown.
    assert [i.modality for i in collection.iter_images(filters=[f35])] == ["T1w", "MD", "T2w", "CT"]
    assert f35.score(next(collection.iter_images(filters=[ModalityFilter("T2w")]))) == 3.0
    # Unknown combination: no KeyError, dropped by default; image_info None: no AttributeError.
    images = list(collection.iter_images(filters=[ModalityFilter("CT"), f25]))
    assert images == []
    both = [i.modality for i in collection.iter_images(filters=[ModalityFilter(["T1w", "T2w"]), f25])]
    assert both == ["T1w"]
    collection.datasets["ds1"].dataset_info["image_quality_score"] = [{"modality": "T1w"}]
    with pytest.raises(ValueError, match=r'datasets\["ds1"\].dataset_info\["image_quality_score"\]\[0\]'):
        OpenMindIQSFilter(collection, threshold=2.0)


def test_nan_in_info_is_written_as_null(tmp_path: Path) -> None:
    doc = _document()
    doc["datasets"]["ds1"]["dataset_info"]["image_quality_score"][0]["image_quality_score"] = float("nan")
    collection = Collection.from_dict(doc)
    out = tmp_path / "nan.json"
    collection.save(out, relative_paths=False)
    written = json.loads(out.read_text())
    assert written["datasets"]["ds1"]["dataset_info"]["image_quality_score"][0]["image_quality_score"] is None
    assert os.path.getsize(out) > 0
