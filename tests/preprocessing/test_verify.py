"""nnssl_verify_dataset: a damaged stored case is listed with its id and file, and --redo makes it sound again."""

from __future__ import annotations

import numpy as np

from nnssl.cli.verify_dataset import main as verify_main
from nnssl.data.case_store import data_path, open_case, verify_case
from nnssl.preprocessing.api import preprocess_dataset
from nnssl.serialization import load_json

DATASET = "Dataset042_PreTest"


def test_verify_lists_a_damaged_case_and_redo_restores_it(nnssl_env, make_raw_dataset):
    make_raw_dataset(include_bad=False)
    preprocess_dataset(DATASET, ["noresample"], num_processes=1, progress=False)
    folder = nnssl_env["nnssl_preprocessed"] / DATASET / "nnsslPlans_noresample"
    stem = next(p for p in folder.rglob("ras.b2nd")).with_suffix("")
    original = np.asarray(open_case(stem).data[:])
    raw = bytearray(data_path(stem).read_bytes())
    raw[len(raw) // 2] ^= 0x10  # one flipped bit: blosc2 may decode it silently
    data_path(stem).write_bytes(bytes(raw))
    rerun = preprocess_dataset(DATASET, ["noresample"], num_processes=1, progress=False)["noresample"]
    assert rerun.num_skipped == 3, "preprocessing alone still reports the damaged case as done"

    assert verify_main(["-d", DATASET, "-c", "noresample", "-np", "1"]) == 2
    (listed,) = load_json(folder / "verification_failures.json")
    assert listed["unique_id"].endswith("ras.nii.gz") and listed["path"] == str(data_path(stem))
    assert "checksum" in listed["problems"][0]

    assert verify_main(["-d", DATASET, "-c", "noresample", "-np", "1", "--redo", "--no_progress"]) == 0
    assert load_json(folder / "verification_failures.json") == []
    assert verify_case(stem) == []
    np.testing.assert_array_equal(np.asarray(open_case(stem).data[:]), original)
    assert verify_main(["-d", DATASET, "-c", "noresample", "-np", "1"]) == 0


def test_reduced_precision_recorded_in_the_plans_is_how_cases_are_stored(nnssl_env, make_raw_dataset):
    from nnssl.planning.plans import Plan

    make_raw_dataset(include_bad=False)
    plans_file = nnssl_env["nnssl_preprocessed"] / DATASET / "nnsslPlans.json"
    plan = Plan.load(plans_file)
    plan.configurations["noresample"].storage_precision = "float16"
    plan.save(plans_file)
    preprocess_dataset(DATASET, ["noresample"], num_processes=1, progress=False)
    folder = nnssl_env["nnssl_preprocessed"] / DATASET / "nnsslPlans_noresample"
    case = open_case(next(folder.rglob("kmeans.b2nd")))
    assert case.data.dtype == np.float16 and case.properties["storage"]["precision"] == "float16"
    assert case.masks["anatomy"].dtype == np.int8
