"""Preprocessing of a careless or hostile collection: every bad file is one refused case with its reason (the
fingerprint refuses it too), cases remember the plan they were made under, and a full disk stops the run with
what was kept and how to continue."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

import bad_inputs
from nnssl.cli import preprocess as preprocess_cli
from nnssl.data.case_store import case_is_complete, open_case, properties_path
from nnssl.data.collection import Collection
from nnssl.planning.fingerprint import extract_fingerprint
from nnssl.planning.plans import Plan
from nnssl.preprocessing import api
from nnssl.preprocessing.api import preprocess_dataset, preprocessed_images
from nnssl.serialization import OutOfSpaceError, load_json, save_json

DATASET = "Dataset042_PreTest"


def _write_collection(raw: Path, entries: list[dict]) -> None:
    sessions = {f"ses-{i}": {"session_id": f"ses-{i}", "images": [entry]} for i, entry in enumerate(entries)}
    document = {
        "collection_index": 42,
        "collection_name": DATASET,
        "datasets": {"1": {"dataset_index": "1", "subjects": {"sub-1": {"sessions": sessions}}}},
    }
    Collection.from_dict(document).save(raw / DATASET / "pretrain_data.json", relative_paths=True)


def _entry(path: Path, anatomy: Path | None = None, name: str | None = None, **info: object) -> dict:
    masks = None if anatomy is None else {"anatomy_mask": str(anatomy), "anonymization_mask": None}
    return {"name": name or path.name, "image_path": str(path), "modality": "T1w", "image_info": info or None,
            "associated_masks": masks}  # fmt: skip


def _hostile_entries(folder: Path) -> dict[str, dict]:
    """{image name: entry} of every bad kind, plus good images and repairable ones."""
    good = bad_inputs.write_nifti(folder / "good.nii.gz", bad_inputs.blob_volume(seed=1))
    anat_image, anat_mask = bad_inputs.image_with_mask(folder / "anat255.nii.gz", folder / "anat255_mask.nii.gz")
    return {
        "good.nii.gz": _entry(good),
        "anat255.nii.gz": _entry(anat_image, anat_mask),
        "limit.nii.gz": _entry(bad_inputs.near_float32_limit(folder / "limit.nii.gz")),
        "cut50.nii.gz": _entry(bad_inputs.truncated_nifti(folder / "cut50.nii.gz", 0.5)),
        "cutf99.nii.gz": _entry(bad_inputs.truncated_nifti(folder / "cutf99.nii.gz", 0.99, np.float32)),
        "cut.mha": _entry(bad_inputs.truncated_mha(folder / "cut.mha")),
        "rgb.mha": _entry(bad_inputs.vector_mha(folder / "rgb.mha")),
        "bomb.nii.gz": _entry(bad_inputs.header_bomb(folder / "bomb.nii.gz")),
        "sheared.nii.gz": _entry(bad_inputs.sheared_nifti(folder / "sheared.nii.gz")),
        "huge.nii.gz": _entry(bad_inputs.float64_huge(folder / "huge.nii.gz")),
        "nomask.nii.gz": _entry(good, folder / "missing_anat.nii.gz", name="nomask.nii.gz"),
    }


REFUSED = {  # image name -> words its reason must contain
    "cut50.nii.gz": ["truncated", "gzip stream stops"],
    "cutf99.nii.gz": ["truncated"],
    "cut.mha": ["truncated"],
    "rgb.mha": ["3 channels per voxel", '"num_channels": 3'],
    "bomb.nii.gz": ["1500 x 1500 x 1500", "more than the limit", "--max_voxels"],
    "sheared.nii.gz": ["sheared", "degrees"],
    "huge.nii.gz": ["1e+300", "float32 range"],
    "nomask.nii.gz": ["anatomy mask", "does not exist", "fix associated_masks.anatomy_mask"],
}


def test_every_bad_file_is_one_refused_case_with_its_reason(nnssl_env, plan_writer):
    entries = _hostile_entries(nnssl_env["nnssl_raw"] / "files")
    _write_collection(nnssl_env["nnssl_raw"], list(entries.values()))
    plan_writer(nnssl_env["nnssl_preprocessed"] / DATASET)
    report = preprocess_dataset(DATASET, ["noresample"], num_processes=2, progress=False)["noresample"]
    reasons = {f["unique_id"].split("__")[-1]: f["reason"] for f in report.failures}
    assert sorted(reasons) == sorted(REFUSED)
    for name, words in REFUSED.items():
        for word in words:
            assert word in reasons[name], (name, reasons[name])
    assert report.num_processed == 3  # good, anat255 (mask binarised), limit (float64 statistics)
    stored = {Path(image.image_path).name: image for image in preprocessed_images(DATASET, "noresample")}
    assert sorted(stored) == ["anat255.b2nd", "good.b2nd", "limit.b2nd"]

    anat = open_case(stored["anat255.b2nd"].image_path)
    mask = anat.masks["anatomy"][:]
    assert set(np.unique(mask).tolist()) == {0, 1} and anat.properties["binarised_masks"] == {"anatomy": [0, 255]}
    assert int(mask.sum()) == int((anat.data[:] != anat.data[0, 0, 0, 0]).sum())  # 1 exactly on the foreground

    limit = open_case(stored["limit.b2nd"].image_path)
    stats = limit.properties["normalization"]["channels"][0]
    foreground = bad_inputs.blob_volume(seed=7) > 0
    values = np.where(foreground, 3e38, 0.0)
    values[10, 12, 14] = -3e38
    # whole-volume statistics (use_mask_for_norm false, the default) over the box cropped to the nonzero region
    box = tuple(slice(int(i.min()), int(i.max()) + 1) for i in np.nonzero(values))
    expected = values[box].astype(np.float64)
    assert stats["mean"] == pytest.approx(expected.mean(), rel=1e-6)
    assert stats["std"] == pytest.approx(expected.std(), rel=1e-6)
    assert np.isfinite(limit.data[:]).all()


def test_the_fingerprint_refuses_the_same_files_from_their_headers(nnssl_env):
    entries = _hostile_entries(nnssl_env["nnssl_raw"] / "files")
    _write_collection(nnssl_env["nnssl_raw"], list(entries.values()))
    collection = Collection.load(nnssl_env["nnssl_raw"] / DATASET / "pretrain_data.json")
    fingerprint = extract_fingerprint(collection, num_processes=2)
    excluded = {Path(e["image_path"]).name: e["reason"] for e in fingerprint["excluded"]}
    # header-only: the float64 values and the missing mask are found when the voxels are read
    assert sorted(excluded) == sorted(set(REFUSED) - {"huge.nii.gz", "nomask.nii.gz"})
    assert "1500 x 1500 x 1500" in excluded["bomb.nii.gz"] and "sheared" in excluded["sheared.nii.gz"]
    assert fingerprint["num_images"] == len(entries) and fingerprint["num_excluded"] == len(excluded)
    # a declared multi-channel image is accepted, with its channels counted
    entries["rgb.mha"]["image_info"] = {"num_channels": 3}
    _write_collection(nnssl_env["nnssl_raw"], list(entries.values()))
    collection = Collection.load(nnssl_env["nnssl_raw"] / DATASET / "pretrain_data.json")
    fingerprint = extract_fingerprint(collection, num_processes=1)
    rgb = [image for image in fingerprint["images"] if image["image_path"].endswith("rgb.mha")]
    assert len(rgb) == 1 and rgb[0]["num_channels"] == 3


def test_resample_sheared_stores_the_sheared_image_on_an_axis_aligned_grid(nnssl_env, plan_writer):
    """``--resample_sheared``: the image the default refuses (see above) is fingerprinted and stored, on the grid its
    resampled header announces, with the file's sheared affine kept in the case properties."""
    from nnssl.imageio import ReadPolicy, read_header

    path = bad_inputs.sheared_nifti(nnssl_env["nnssl_raw"] / "files" / "sheared.nii.gz")
    _write_collection(nnssl_env["nnssl_raw"], [_entry(path)])
    collection = Collection.load(nnssl_env["nnssl_raw"] / DATASET / "pretrain_data.json")
    with pytest.raises(ValueError, match="--resample_sheared"):
        extract_fingerprint(collection)  # its only image refused
    fingerprint = extract_fingerprint(collection, resample_sheared=True)
    assert fingerprint["num_excluded"] == 0
    plan_writer(nnssl_env["nnssl_preprocessed"] / DATASET)
    assert preprocess_cli.main(["-d", "42", "-c", "noresample", "-np", "1", "--no_progress"]) == 0
    with pytest.raises(FileNotFoundError, match="No complete preprocessed case"):
        preprocessed_images(DATASET, "noresample")  # refused without the flag
    args = ["-d", "42", "-c", "noresample", "-np", "1", "--no_progress", "--resample_sheared"]
    assert preprocess_cli.main(args) == 0
    (stored,) = preprocessed_images(DATASET, "noresample")
    case = open_case(stored.image_path)
    header = read_header(path, ReadPolicy(resample_sheared=True))
    assert fingerprint["images"][0]["shape"] == list(header.shape)
    assert case.properties["reader"] == "nibabel, resampled from a sheared affine"
    assert case.properties["sheared_affine"][0][:2] == pytest.approx([1.0, 0.4])
    assert case.properties["shape_before_cropping"] == list(header.shape)  # then cropped to the nonzero box
    assert case.properties["spacing"] == pytest.approx([53.0, 1.0 * np.hypot(1.0, 0.4), 1.0])


def _good_dataset(nnssl_env, plan_writer, count: int = 3) -> None:
    folder = nnssl_env["nnssl_raw"] / "files"
    paths = [bad_inputs.write_nifti(folder / f"g{i}.nii.gz", bad_inputs.blob_volume(seed=i)) for i in range(count)]
    _write_collection(nnssl_env["nnssl_raw"], [_entry(p) for p in paths])
    plan_writer(nnssl_env["nnssl_preprocessed"] / DATASET)


def _stems(nnssl_env, count: int = 3) -> list[Path]:
    out = nnssl_env["nnssl_preprocessed"] / DATASET / "nnsslPlans_onemmiso" / DATASET / "1" / "sub-1"
    return [out / f"ses-{i}" / f"g{i}" for i in range(count)]


def test_cases_made_under_another_plan_are_redone_and_training_refuses_them(nnssl_env, plan_writer):
    _good_dataset(nnssl_env, plan_writer)
    plans_file = nnssl_env["nnssl_preprocessed"] / DATASET / "nnsslPlans.json"
    first = preprocess_dataset(DATASET, ["onemmiso"], num_processes=1, progress=False)["onemmiso"]
    assert first.num_processed == 3
    digest = load_json(properties_path(_stems(nnssl_env)[0]))["made_with"]["digest"]

    plan = Plan.load(plans_file)
    plan.configurations["onemmiso"].patch_size = [64, 64, 64]  # a training setting: cases stay valid
    plan.save(plans_file)
    again = preprocess_dataset(DATASET, ["onemmiso"], num_processes=1, progress=False)["onemmiso"]
    assert (again.num_skipped, again.num_processed, again.num_redone_other_plan) == (3, 0, 0)

    plan.configurations["onemmiso"].spacing = [2.0, 2.0, 2.0]  # an edited plan: every case is stale
    plan.save(plans_file)
    with pytest.raises(FileNotFoundError) as info:
        preprocessed_images(DATASET, "onemmiso")
    message = str(info.value)
    assert "3 of the cases" in message and "another plan" in message
    assert message.endswith("nnssl_preprocess -d Dataset042_PreTest -c onemmiso -plans_name nnsslPlans")

    redo = preprocess_dataset(DATASET, ["onemmiso"], num_processes=1, progress=False)["onemmiso"]
    assert (redo.num_skipped, redo.num_processed, redo.num_redone_other_plan) == (0, 3, 3)
    cases = [open_case(stem) for stem in _stems(nnssl_env)]
    assert all(case.properties["spacing"] == [2, 2, 2] for case in cases)
    assert all(case.properties["made_with"]["digest"] != digest for case in cases)
    assert len(preprocessed_images(DATASET, "onemmiso")) == 3


def test_a_case_that_records_no_plan_is_redone_and_a_stale_case_that_fails_is_not_listed(nnssl_env, plan_writer):
    _good_dataset(nnssl_env, plan_writer)
    preprocess_dataset(DATASET, ["onemmiso"], num_processes=1, progress=False)
    old, broken = _stems(nnssl_env)[:2]
    properties = load_json(properties_path(old))
    del properties["made_with"]  # a case written by an nnssl before plan digests
    save_json(properties, properties_path(old))
    plan_file = nnssl_env["nnssl_preprocessed"] / DATASET / "nnsslPlans.json"
    plan = Plan.load(plan_file)
    stale = load_json(properties_path(broken))
    stale["made_with"]["digest"] = "0" * 16
    save_json(stale, properties_path(broken))
    bad_inputs.truncated_nifti(nnssl_env["nnssl_raw"] / "files" / "g1.nii.gz", 0.5)  # its source is now cut
    report = preprocess_dataset(DATASET, ["onemmiso"], num_processes=1, progress=False)["onemmiso"]
    assert (report.num_skipped, report.num_processed, report.num_redone_other_plan) == (1, 1, 2)
    assert [f["unique_id"].split("__")[-1] for f in report.failures] == ["g1.nii.gz"]
    assert not case_is_complete(broken)  # the stale case is gone, not kept as if it were valid
    assert sorted(Path(i.image_path).name for i in preprocessed_images(DATASET, "onemmiso")) == ["g0.b2nd", "g2.b2nd"]
    assert plan.plans_name == "nnsslPlans"


def test_full_disk_stops_the_run_with_what_was_kept_and_the_command(nnssl_env, plan_writer, monkeypatch, capsys):
    _good_dataset(nnssl_env, plan_writer, count=4)
    real_write = api.write_case
    calls = {"n": 0}

    def write_until_full(stem, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] >= 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(stem, *args, **kwargs)

    monkeypatch.setattr(api, "write_case", write_until_full)
    with pytest.raises(OutOfSpaceError) as info:
        preprocess_dataset(DATASET, ["onemmiso"], num_processes=1, progress=False)
    message = str(info.value)
    out_dir = nnssl_env["nnssl_preprocessed"] / DATASET / "nnsslPlans_onemmiso"
    assert message.startswith(f"no space left on {out_dir}")
    assert "2 case(s) of this run were stored and are kept" in message and "2 case(s) were not written" in message
    assert "nnssl_preprocess -d Dataset042_PreTest -c onemmiso -plans_name nnsslPlans" in message
    assert calls["n"] == 3, "the run went on writing after the disk was full"
    assert not list(out_dir.rglob("*nnssl_tmp*"))
    # the command line says the same in one line, without a traceback, and exits 1
    calls["n"] = -10
    monkeypatch.setattr(api, "write_case", write_until_full)
    assert preprocess_cli.main(["-d", "42", "-np", "1", "--no_progress"]) == 0  # space again: the run completes
    calls["n"] = 2
    shutil.rmtree(out_dir)
    assert preprocess_cli.main(["-d", "42", "-np", "1", "--no_progress"]) == 1
    err = capsys.readouterr().err
    assert "nnssl_preprocess: error: no space left on" in err and "Traceback" not in err


def _mount_tmpfs(folder: Path, size: str) -> bool:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    folder.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                          capture_output=True).returncode == 0  # fmt: skip


def test_real_full_disk_keeps_finished_cases_and_resumes(nnssl_env, plan_writer, monkeypatch):
    """On a real 1 MiB file system (tmpfs, needs root): blosc2 reports the full disk only as a RuntimeError."""
    small = nnssl_env["nnssl_preprocessed"].parent / "small_disk"
    if not _mount_tmpfs(small, "1m"):
        pytest.skip("needs root and mount to build a small file system")
    try:
        monkeypatch.setenv("nnssl_preprocessed", str(small))
        folder = nnssl_env["nnssl_raw"] / "files"
        paths = [bad_inputs.write_nifti(folder / f"g{i}.nii.gz", bad_inputs.blob_volume(seed=i)) for i in range(2)]
        noise = np.random.default_rng(0).random((96, 96, 96)).astype(np.float32)  # 3.4 MB, incompressible
        paths.append(bad_inputs.write_nifti(folder / "noise.nii.gz", noise + 1))
        _write_collection(nnssl_env["nnssl_raw"], [_entry(p) for p in paths])
        plan_writer(small / DATASET)
        with pytest.raises(OutOfSpaceError, match=f"^no space left on {small}") as info:
            preprocess_dataset(DATASET, ["noresample"], num_processes=1, progress=False)
        assert "2 case(s) of this run were stored and are kept" in str(info.value)
        out = small / DATASET / "nnsslPlans_noresample" / DATASET / "1" / "sub-1"
        assert case_is_complete(out / "ses-0" / "g0") and case_is_complete(out / "ses-1" / "g1")
        assert not list(small.rglob("*nnssl_tmp*"))
        subprocess.run(["mount", "-o", "remount,size=16m", str(small)], check=True)  # space freed
        report = preprocess_dataset(DATASET, ["noresample"], num_processes=1, progress=False)["noresample"]
        assert (report.num_skipped, report.num_processed, report.failures) == (2, 1, [])
    finally:
        # blosc2 keeps the descriptor of its failed write open in this process: detach lazily if it is busy
        if subprocess.run(["umount", str(small)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(small)], check=False)
