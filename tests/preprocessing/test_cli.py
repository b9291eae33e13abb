"""Tests of nnssl_preprocess and nnssl_plan_and_preprocess: strict flags, B12 default, the demo end to end."""

from __future__ import annotations

import numpy as np
import pytest

from nnssl.cli import plan_and_preprocess, preprocess
from nnssl.data.case_store import open_case
from nnssl.preprocessing.api import preprocessed_images
from nnssl.serialization import load_json

DATASET = "Dataset042_PreTest"


def test_preprocess_parser_defaults_and_strictness():
    args = preprocess.build_parser().parse_args(["-d", "42"])
    assert args.c == ["onemmiso"] and args.np == [4] and args.plans_name == "nnsslPlans"
    assert (args.part, args.total_parts, args.verbose) == (0, 1, False)
    for bad in (["-d", "42", "-c", "twommiso"], ["-d", "42", "--verbos"], ["-d", "42", "-np", "x"]):
        with pytest.raises(SystemExit):
            preprocess.build_parser().parse_args(bad)
    with pytest.raises(SystemExit):
        preprocess.main(["-d", "42", "-c", "onemmiso", "noresample", "-np", "1", "2", "3"])
    with pytest.raises(SystemExit):
        preprocess.main(["-d", "42", "-part", "2", "-total_parts", "2"])
    pp = plan_and_preprocess.build_parser().parse_args(["-d", "1", "--no_pp", "--clean", "-npfp", "2"])
    assert pp.no_pp and pp.clean and pp.npfp == 2 and pp.np == [4] and pp.pl == "ExperimentPlanner"


def test_preprocess_cli_default_np_with_one_config(nnssl_env, make_raw_dataset, capsys):
    make_raw_dataset(include_bad=True)
    # upstream bug B12: the default -np must work with a single configuration
    assert preprocess.main(["-d", "42", "-c", "noresample", "--no_progress"]) == 0
    failures = load_json(
        nnssl_env["nnssl_preprocessed"] / DATASET / "nnsslPlans_noresample" / "preprocessing_failures.json"
    )
    assert len(failures) == 5
    assert len(preprocessed_images(42, "noresample")) == 3
    assert preprocess.main(["-d", "42", "-c", "median", "--no_progress"]) == 1
    assert "no configuration 'median'" in capsys.readouterr().err


def test_missing_plans_is_a_clear_error(nnssl_env, capsys):
    (nnssl_env["nnssl_raw"] / DATASET).mkdir()
    assert preprocess.main(["-d", "42", "--no_progress"]) == 1
    assert "nnssl_plan_experiment" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="nnssl_preprocess -d Dataset042_PreTest -c onemmiso"):
        preprocessed_images(42, "onemmiso")


def test_plan_and_preprocess_demo(nnssl_env, demo_raw_dataset):
    assert plan_and_preprocess.main(["-d", "1", "-c", "noresample", "-npfp", "1", "-np", "2", "--no_progress"]) == 0
    dataset_dir = nnssl_env["nnssl_preprocessed"] / "Dataset001_Demo"
    assert (dataset_dir / "dataset_fingerprint.json").is_file() and (dataset_dir / "nnsslPlans.json").is_file()
    images = preprocessed_images(1, "noresample")
    assert len(images) == 5
    assert load_json(dataset_dir / "nnsslPlans_noresample" / "preprocessing_failures.json") == []
    by_modality = {}
    for image in images:
        case = open_case(image.image_path)
        data = case.data[:]
        assert np.isfinite(data).all() and data.dtype == np.float32
        by_modality.setdefault(case.properties["modality"], []).append(case.properties["normalization"]["scheme"])
        if image.anatomy_mask:
            assert case.masks["anatomy"].shape == case.data.shape
    assert by_modality["CT"] == ["ZScoreNormalization"] and set(by_modality["T1w"]) == {"ZScoreNormalization"}
