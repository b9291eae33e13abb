"""Fixtures for preprocessing tests: a small raw dataset (demo volumes plus synthetic bad inputs) and its plan."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnssl.data.demo import demo_asset
from nnssl.planning.plans import ConfigurationPlan, Plan

DATASET = "Dataset042_PreTest"


def write_plan(dataset_dir: Path, transpose: tuple[int, int, int] = (0, 1, 2)) -> Plan:
    backward = [int(np.argsort(transpose)[i]) for i in range(3)]
    plan = Plan(
        dataset_name=DATASET,
        plans_name="nnsslPlans",
        original_median_spacing_after_transp=[1.0, 1.0, 1.0],
        image_reader_writer="SimpleITKIO",
        transpose_forward=list(transpose),
        transpose_backward=backward,
        configurations={
            "onemmiso": ConfigurationPlan(data_identifier="nnsslPlans_onemmiso", spacing=[1.0, 1.0, 1.0]),
            "noresample": ConfigurationPlan(data_identifier="nnsslPlans_noresample", spacing_style="noresample"),
        },
        experiment_planner_used="test",
    )
    dataset_dir.mkdir(parents=True, exist_ok=True)
    plan.save(dataset_dir / "nnsslPlans.json")
    return plan


def _image(path: Path, array_zyx: np.ndarray, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), direction=None) -> str:
    img = sitk.GetImageFromArray(array_zyx)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    if direction is not None:
        img.SetDirection(direction)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(path))
    return str(path)


def _entry(name: str, path: str, modality: str = "T1w", anat: str | None = None, anon: str | None = None) -> dict:
    masks = None if anat is None and anon is None else {"anatomy_mask": anat, "anonymization_mask": anon}
    return {"name": name, "image_path": path, "modality": modality, "image_info": None, "associated_masks": masks}


def blob(shape=(20, 24, 28), seed=0) -> np.ndarray:
    """A noisy ellipsoid on a zero background with an asymmetric marker (z, y, x order)."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    inside = (z**2 + y**2 + x**2) < 0.7
    arr = np.where(inside, 100 + 10 * rng.normal(size=shape), 0).astype(np.float32)
    arr[shape[0] // 2 - 2 : shape[0] // 2 + 2, shape[1] // 2 - 2 : shape[1] // 2 + 2, shape[2] // 2 + 3 :][
        ..., : shape[2] // 5
    ] = 300.0
    return arr


def build_raw_dataset(raw_root: Path, include_bad: bool = True, include_ct: bool = False) -> dict[str, dict]:
    """Write images and pretrain_data.json under raw_root/DATASET; returns {image name: entry}."""
    folder = raw_root / DATASET / "images"
    kmeans = sitk.ReadImage(str(demo_asset("KmeansTest_T1UCharRaw.nii.gz")))
    skull = sitk.ReadImage(str(demo_asset("KmeansTest_T1RawSkullStrip.nii.gz")))
    anat = sitk.Cast(skull > 0, sitk.sitkUInt8)
    anat.CopyInformation(kmeans)
    anon_arr = np.zeros(sitk.GetArrayFromImage(kmeans).shape, np.uint8)
    anon_arr[:, :, :20] = 1  # a slab along x: "defaced" voxels, distinct from the anatomy mask
    anon = sitk.GetImageFromArray(anon_arr)
    anon.CopyInformation(kmeans)
    (folder / "k").mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(kmeans, str(folder / "k" / "kmeans.nii.gz"))
    sitk.WriteImage(anat, str(folder / "k" / "kmeans_anat.nii.gz"))
    sitk.WriteImage(anon, str(folder / "k" / "kmeans_anon.nii.gz"))
    entries = {
        "kmeans.nii.gz": _entry(
            "kmeans.nii.gz",
            str(folder / "k" / "kmeans.nii.gz"),
            anat=str(folder / "k" / "kmeans_anat.nii.gz"),
            anon=str(folder / "k" / "kmeans_anon.nii.gz"),
        )
    }
    # the same physical volume stored with the x axis flipped (RAS-like vs LAS-like direction)
    arr = blob()
    spacing = (1.0, 1.0, 1.0)
    nx = arr.shape[2]
    entries["ras.nii.gz"] = _entry("ras.nii.gz", _image(folder / "o" / "ras.nii.gz", arr, spacing, (0.0, 0.0, 0.0)))
    flipped = _image(
        folder / "o" / "las.nii.gz", np.ascontiguousarray(arr[:, :, ::-1]), spacing, (float(nx - 1), 0.0, 0.0),
        (-1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0),
    )  # fmt: skip
    entries["las.nii.gz"] = _entry("las.nii.gz", flipped)
    if include_ct:
        entries["ct.nii.gz"] = _entry("ct.nii.gz", str(demo_asset("ct_brain_atlas_1mm.nii.gz")), modality="CT")
    if include_bad:
        nan = blob(seed=1)
        nan[5, 5, 5] = np.nan
        entries["nan.mha"] = _entry("nan.mha", _image(folder / "b" / "nan.mha", nan))
        entries["empty.nii.gz"] = _entry(
            "empty.nii.gz", _image(folder / "b" / "empty.nii.gz", np.zeros((8, 8, 8), np.float32))
        )
        four_d = sitk.JoinSeries([sitk.GetImageFromArray(blob(seed=2)), sitk.GetImageFromArray(blob(seed=3))])
        sitk.WriteImage(four_d, str(folder / "b" / "fourd.nii.gz"))
        entries["fourd.nii.gz"] = _entry("fourd.nii.gz", str(folder / "b" / "fourd.nii.gz"))
        (folder / "b" / "broken.nii.gz").write_bytes(b"this is not an image")
        entries["broken.nii.gz"] = _entry("broken.nii.gz", str(folder / "b" / "broken.nii.gz"))
        good = _image(folder / "b" / "gridimg.nii.gz", blob(seed=4))
        wrong = _image(
            folder / "b" / "gridmask.nii.gz", (blob(seed=4) > 0).astype(np.uint8), (1.0, 1.0, 1.0), (5.0, 0.0, 0.0)
        )
        entries["gridimg.nii.gz"] = _entry("gridimg.nii.gz", good, anat=wrong)
    sessions = {
        f"ses-{i}": {"session_id": f"ses-{i}", "session_info": None, "images": [entry]}
        for i, entry in enumerate(entries.values())
    }
    collection = {
        "collection_index": 42,
        "collection_name": DATASET,
        "datasets": {
            "1": {
                "dataset_index": "1",
                "name": "test",
                "dataset_info": None,
                "subjects": {"sub-1": {"subject_id": "sub-1", "subject_info": None, "sessions": sessions}},
            }
        },
    }
    from nnssl.data.collection import Collection

    Collection.from_dict(collection).save(raw_root / DATASET / "pretrain_data.json", relative_paths=True)
    return entries


@pytest.fixture
def make_raw_dataset(nnssl_env: dict[str, Path]):
    """Callable (include_bad, include_ct, transpose) -> entries: writes the raw dataset and the plan."""

    def make(include_bad: bool = True, include_ct: bool = False, transpose: tuple[int, int, int] = (0, 1, 2)):
        entries = build_raw_dataset(nnssl_env["nnssl_raw"], include_bad=include_bad, include_ct=include_ct)
        write_plan(nnssl_env["nnssl_preprocessed"] / DATASET, transpose)
        return entries

    return make


@pytest.fixture
def raw_dataset(nnssl_env: dict[str, Path]) -> dict[str, dict]:
    entries = build_raw_dataset(nnssl_env["nnssl_raw"])
    write_plan(nnssl_env["nnssl_preprocessed"] / DATASET)
    return entries


@pytest.fixture
def plan_writer():
    """:func:`write_plan`, for tests that build their own raw dataset."""
    return write_plan
