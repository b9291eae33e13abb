"""Fingerprint extraction: header-only, parallel, tolerant of unreadable files, written once."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from nnssl.cli import extract_fingerprint as cli
from nnssl.data.collection import Collection
from nnssl.planning import extract_fingerprint, extract_fingerprint_for_dataset, fingerprint_path
from nnssl.serialization import load_json, save_json

DATASET = "Dataset042_Tiny"


def _volume(path: Path, shape: tuple[int, int, int], zooms: tuple[float, float, float], axcodes: str) -> None:
    """A small NIfTI with voxel sizes ``zooms`` (file x, y, z) and axis directions ``axcodes`` (RAS or LAS)."""
    sign = {"RAS": [1, 1, 1], "LAS": [-1, 1, 1]}[axcodes]
    affine = np.diag([*(s * z for s, z in zip(sign, zooms)), 1.0])
    nib.save(nib.Nifti1Image(np.ones(shape, np.int16), affine), path)


def _tiny_collection(folder: Path) -> Collection:
    """Four images: three readable ones with known spacing, one corrupt (random bytes named .nii.gz)."""
    folder.mkdir(parents=True, exist_ok=True)
    _volume(folder / "a.nii.gz", (10, 12, 8), (1.0, 1.0, 3.0), "RAS")
    _volume(folder / "b.nii.gz", (10, 12, 9), (0.8, 0.9, 2.5), "LAS")
    _volume(folder / "c.nii.gz", (11, 12, 7), (1.2, 1.1, 4.0), "RAS")
    (folder / "bad.nii.gz").write_bytes(np.random.default_rng(0).bytes(2048))
    images = [("a", "T1w"), ("bad", "T1w"), ("b", "T2w"), ("c", "CT")]
    subjects = {
        f"sub-{name}": {
            "subject_id": f"sub-{name}",
            "sessions": {
                "ses-1": {
                    "session_id": "ses-1",
                    "images": [
                        {"name": f"{name}.nii.gz", "image_path": str(folder / f"{name}.nii.gz"), "modality": mod}
                    ],
                }
            },
        }
        for name, mod in images
    }
    return Collection.from_dict(
        {
            "collection_index": 42,
            "collection_name": DATASET,
            "datasets": {"7": {"dataset_index": "7", "subjects": subjects}},
        }
    )


def test_fingerprint_records_headers_and_excludes_the_corrupt_file(tmp_path: Path) -> None:
    fp = extract_fingerprint(_tiny_collection(tmp_path / "img"), num_processes=1)
    assert fp["num_images"] == 4 and fp["num_excluded"] == 1
    # canonical (z, y, x) order: file z spacing comes first
    np.testing.assert_allclose(fp["spacings"], [[3.0, 1.0, 1.0], [2.5, 0.9, 0.8], [4.0, 1.1, 1.2]], rtol=1e-6)
    assert fp["shapes"] == [[8, 12, 10], [9, 12, 10], [7, 12, 11]]
    np.testing.assert_allclose(fp["median_spacing"], [3.0, 1.0, 1.0], rtol=1e-6)
    assert fp["orientations"] == {"LAS": 1, "RAS": 2}
    (bad,) = fp["excluded"]
    assert bad["unique_id"] == f"{DATASET}__7__sub-bad__ses-1__bad.nii.gz"
    assert bad["image_path"].endswith("bad.nii.gz")
    assert "SimpleITK" in bad["reason"] and "nibabel" in bad["reason"]
    first = fp["images"][0]
    assert first == {
        "unique_id": f"{DATASET}__7__sub-a__ses-1__a.nii.gz",
        "image_path": str(tmp_path / "img" / "a.nii.gz"),
        "spacing": [3.0, 1.0, 1.0],
        "shape": [8, 12, 10],
        "num_channels": 1,
        "dtype": "int16",
        "orientation": "RAS",
        "modality": "T1w",
        "reader": "nibabel",
    }
    assert [img["modality"] for img in fp["images"]] == ["T1w", "T2w", "CT"]


def test_parallel_fingerprint_equals_serial(tmp_path: Path) -> None:
    collection = _tiny_collection(tmp_path / "img")
    assert extract_fingerprint(collection, num_processes=2) == extract_fingerprint(collection, num_processes=1)


def test_fingerprint_reads_headers_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("voxel data was read")

    collection = _tiny_collection(tmp_path / "img")
    monkeypatch.setattr(sitk.ImageFileReader, "Execute", forbidden)
    monkeypatch.setattr(nib.arrayproxy.ArrayProxy, "__array__", forbidden)
    fp = extract_fingerprint(collection, num_processes=1)
    assert fp["num_excluded"] == 1 and len(fp["images"]) == 3


def test_nothing_readable_is_an_error(tmp_path: Path) -> None:
    bad = tmp_path / "x.nii.gz"
    bad.write_bytes(b"not an image")
    collection = _tiny_collection(tmp_path / "img")
    only_bad = [img for img in collection.iter_images() if "bad" in img.image_path]
    with pytest.raises(ValueError, match="None of the 1 images could be read.*bad.nii.gz"):
        extract_fingerprint(only_bad)


def test_dataset_fingerprint_written_once_unless_clean(
    nnssl_env: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = nnssl_env["nnssl_raw"] / DATASET
    collection = _tiny_collection(raw / "images")
    collection.save(raw / "pretrain_data.json")
    fp = extract_fingerprint_for_dataset(42, num_processes=1, progress=False)
    out = fingerprint_path(DATASET)
    assert out == nnssl_env["nnssl_preprocessed"] / DATASET / "dataset_fingerprint.json"
    assert load_json(out) == fp and fp["dataset_name"] == DATASET
    assert not [p for p in out.parent.iterdir() if "nnssl_tmp" in p.name]

    save_json({"spacings": [[9.0, 9.0, 9.0]]}, out)  # an existing fingerprint is kept ...
    assert extract_fingerprint_for_dataset(DATASET, num_processes=1, progress=False) == {"spacings": [[9.0, 9.0, 9.0]]}
    assert cli.main(["-d", "42", "-np", "1", "--clean"]) == 0  # ... unless --clean
    assert load_json(out)["spacings"] == fp["spacings"]


def test_demo_dataset_fingerprint(demo_raw_dataset: Path) -> None:
    fp = extract_fingerprint_for_dataset(1, num_processes=1, progress=False)
    assert fp["num_excluded"] == 0 and fp["num_images"] == len(fp["images"]) >= 4
    by_file = {Path(img["image_path"]).name: img for img in fp["images"]}
    kmeans = by_file["KmeansTest_T1UCharRaw.nii.gz"]
    assert (kmeans["spacing"], kmeans["shape"], kmeans["orientation"]) == ([2.0, 3.0, 2.0], [128, 62, 128], "LSA")
    assert by_file["anatomical.nii"]["orientation"] == "LAS"


def test_cli_help_and_errors(nnssl_env: dict[str, Path], monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["--help"])
    assert info.value.code == 0
    with pytest.raises(SystemExit) as info:
        cli.main([])  # -d is required
    assert info.value.code == 2
    with pytest.raises(SystemExit) as info:
        cli.main(["-d", "1", "--cleen"])  # typos are errors, not silently ignored
    assert info.value.code == 2

    (nnssl_env["nnssl_raw"] / DATASET).mkdir()
    capsys.readouterr()
    assert cli.main(["-d", "42", "-np", "1"]) == 1
    assert "pretrain_data.json does not exist" in capsys.readouterr().err

    monkeypatch.delenv("nnssl_preprocessed")
    assert cli.main(["-d", DATASET, "-np", "1"]) == 1
    err = capsys.readouterr().err
    assert "nnssl_preprocessed" in err and "export nnssl_preprocessed=" in err
