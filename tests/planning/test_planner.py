"""Experiment planning: median spacing, transpose, configurations, plans file round trip and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from nnssl.cli import plan_experiment as cli
from nnssl.planning import (
    PLANNERS,
    ExperimentPlanner,
    Plan,
    PlanError,
    load_plans,
    plan_experiment_for_dataset,
    plans_path,
)
from nnssl.serialization import save_json

DATASET = "Dataset042_Tiny"
UPSTREAM_PLAN_KEYS = [
    "dataset_name",
    "plans_name",
    "original_median_spacing_after_transp",
    "image_reader_writer",
    "transpose_forward",
    "transpose_backward",
    "configurations",
    "experiment_planner_used",
]
UPSTREAM_CONFIG_KEYS = [
    "data_identifier",
    "preprocessor_name",
    "spacing_style",
    "normalization_schemes",
    "use_mask_for_norm",
    "resampling_fn_data",
    "resampling_fn_data_kwargs",
    "resampling_fn_mask",
    "resampling_fn_mask_kwargs",
    "spacing",
    "patch_size",
]


@pytest.fixture
def dataset(nnssl_env: dict[str, Path]) -> Path:
    folder = nnssl_env["nnssl_preprocessed"] / DATASET
    folder.mkdir()
    return folder


def _plan(spacings: list[list[float]], **fingerprint: object) -> Plan:
    return ExperimentPlanner(DATASET).plan_from_fingerprint({"spacings": spacings, **fingerprint})


def test_transpose_puts_the_coarsest_axis_first() -> None:
    assert ExperimentPlanner.transpose([3.0, 1.0, 1.0]) == ([0, 1, 2], [0, 1, 2])
    assert ExperimentPlanner.transpose([1.0, 3.0, 1.0]) == ([1, 0, 2], [1, 0, 2])
    assert ExperimentPlanner.transpose([1.0, 1.0, 3.0]) == ([2, 0, 1], [1, 2, 0])
    assert ExperimentPlanner.transpose([1.0, 1.0, 1.0]) == ([0, 1, 2], [0, 1, 2])
    for spacing in ([0.5, 0.7, 5.0], [2.0, 9.0, 1.0]):
        forward, backward = ExperimentPlanner.transpose(spacing)
        assert [forward[b] for b in backward] == [0, 1, 2]
        assert spacing[forward[0]] == max(spacing)


def test_plan_values(dataset: Path) -> None:
    spacings = [[1.0, 2.0, 1.0], [0.9, 3.0, 1.1], [1.0, 2.5, 0.8], [1.2, 6.0, 1.0]]
    plan = _plan(spacings)
    median = np.median(np.asarray(spacings), axis=0)  # [1.0, 2.75, 1.0]
    assert plan.transpose_forward == [1, 0, 2] and plan.transpose_backward == [1, 0, 2]
    np.testing.assert_allclose(plan.original_median_spacing_after_transp, median[[1, 0, 2]])
    assert plan.original_median_spacing_after_transp == [2.75, 1.0, 1.0]
    assert list(plan.configurations) == ["onemmiso", "median", "noresample"]
    assert plan.configuration("onemmiso").spacing == [1.0, 1.0, 1.0]
    assert plan.configuration("median").spacing == [2.75, 1.0, 1.0]
    assert plan.configuration("noresample").spacing is None
    for name, config in plan.configurations.items():
        assert config.data_identifier == f"nnsslPlans_{name}" and config.spacing_style == name
        assert config.patch_size == [160, 160, 160]
        assert config.normalization_schemes == ["ZScoreNormalization"] and config.use_mask_for_norm == [False]
        assert config.resampling_fn_data == config.resampling_fn_mask == "resample_data_or_seg_to_shape"
        assert config.resampling_fn_data_kwargs == {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None}
        assert config.resampling_fn_mask_kwargs == {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None}
    assert plan.experiment_planner_used == "ExperimentPlanner" and plan.canonical_orientation == "LPS"
    assert plan.dataset_name == DATASET and plan.plans_name == "nnsslPlans"


def test_normalization_by_modality_and_channels(dataset: Path) -> None:
    config = _plan([[1.0, 1.0, 1.0]]).configuration("onemmiso")
    # nnU-Net's pre-trained fine-tuning z-scores every modality, CT included: so does the default plan
    assert config.normalization_by_modality == {}
    assert config.normalization_for("CT") == config.normalization_for("T1w") == "ZScoreNormalization"
    config.normalization_by_modality = {"CT": "CTNormalization"}  # still selectable per modality
    assert config.normalization_for("CT") == config.normalization_for("ct") == "CTNormalization"
    assert config.normalization_for("T1w") == config.normalization_for("FLAIR") == "ZScoreNormalization"
    two = _plan([[1.0, 1.0, 1.0]], images=[{"num_channels": 2}]).configuration("median")
    assert two.normalization_schemes == ["ZScoreNormalization"] * 2 and two.use_mask_for_norm == [False, False]


def test_plans_file_keys_and_round_trip(dataset: Path, tmp_path: Path) -> None:
    plan = _plan([[3.0, 1.0, 1.0], [2.0, 1.0, 1.0]])
    path = tmp_path / "plans.json"
    plan.save(path)
    data = json.loads(path.read_text())
    assert list(data) == [*UPSTREAM_PLAN_KEYS, "canonical_orientation"]
    for config in data["configurations"].values():
        assert list(config) == [*UPSTREAM_CONFIG_KEYS, "normalization_by_modality", "storage_precision"]
    assert Plan.load(path) == plan
    assert Plan.load(path).to_dict() == data

    restricted = plan.restricted_to("median", patch_size=[96, 96, 96])
    assert list(restricted.configurations) == ["median"]
    assert restricted.configuration("median").patch_size == [96, 96, 96]
    assert plan.configuration("median").patch_size == [160, 160, 160]


def test_upstream_files_load(dataset: Path, tmp_path: Path) -> None:
    """An upstream plans file (no canonical_orientation / normalization_by_modality) and fingerprint still work."""
    data = _plan([[1.0, 1.0, 1.0]]).to_dict()
    del data["canonical_orientation"]
    for config in data["configurations"].values():
        del config["normalization_by_modality"]
        del config["storage_precision"]
        config["patch_size"] = None
    save_json(data, tmp_path / "upstream.json")
    plan = Plan.load(tmp_path / "upstream.json")
    assert plan.configuration("onemmiso").normalization_for("CT") == "ZScoreNormalization"  # as upstream
    assert plan.configuration("onemmiso").storage_precision == "float32"
    data["configurations"]["onemmiso"]["storage_precision"] = "float8"
    save_json(data, tmp_path / "bad_precision.json")
    with pytest.raises(PlanError, match=r"configurations\.onemmiso: storage_precision: Unknown storage precision"):
        Plan.load(tmp_path / "bad_precision.json")
    assert plan.configuration("onemmiso").patch_size is None


def test_bad_plans_files_name_the_file_and_key(dataset: Path, tmp_path: Path) -> None:
    good = _plan([[1.0, 1.0, 1.0]]).to_dict()
    path = tmp_path / "broken.json"
    del good["transpose_forward"]
    save_json(good, path)
    with pytest.raises(PlanError, match=r"broken\.json.*missing keys \['transpose_forward'\]"):
        Plan.load(path)

    good = _plan([[1.0, 1.0, 1.0]]).to_dict()
    good["configurations"]["median"]["spacingg"] = [1, 1, 1]
    save_json(good, path)
    with pytest.raises(PlanError, match=r"broken\.json: configurations\.median.*unknown keys \['spacingg'\]"):
        Plan.load(path)

    good = _plan([[1.0, 1.0, 1.0]]).to_dict()
    good["transpose_backward"] = [1, 0, 2]
    save_json(good, path)
    with pytest.raises(PlanError, match="not the inverse"):
        Plan.load(path)

    path.write_text("{not json")
    with pytest.raises(ValueError, match=r"broken\.json is not valid JSON"):
        Plan.load(path)
    with pytest.raises(FileNotFoundError, match="nnssl_plan_experiment"):
        Plan.load(tmp_path / "absent.json")
    with pytest.raises(KeyError, match="Did you mean onemmiso"):
        _plan([[1.0, 1.0, 1.0]]).configuration("onemiso")
    with pytest.raises(PlanError, match="spacings"):
        _plan([])


def test_plan_experiment_for_dataset_writes_plans(dataset: Path) -> None:
    save_json({"spacings": [[1.0, 1.0, 4.0], [1.0, 1.0, 5.0]]}, dataset / "dataset_fingerprint.json")
    plan = plan_experiment_for_dataset(42)
    assert plans_path(DATASET) == dataset / "nnsslPlans.json"
    assert load_plans(DATASET) == plan and plan.transpose_forward == [2, 0, 1]
    assert plan.configuration("median").spacing == [4.5, 1.0, 1.0]

    other = plan_experiment_for_dataset(DATASET, plans_name="myPlans")
    assert (dataset / "myPlans.json").is_file()
    assert other.plans_name == "myPlans" and other.configuration("median").data_identifier == "myPlans_median"
    with pytest.raises(KeyError, match="Did you mean: ExperimentPlanner"):
        plan_experiment_for_dataset(42, planner="ExperimentPlaner")
    assert PLANNERS.names() == ["ExperimentPlanner"]


def test_cli(dataset: Path, nnssl_env: dict[str, Path], monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["--help"])
    assert info.value.code == 0
    with pytest.raises(SystemExit) as info:
        cli.main(["-pl", "ExperimentPlanner"])  # -d is required
    assert info.value.code == 2
    capsys.readouterr()

    assert cli.main(["-d", "42"]) == 1
    assert "nnssl_extract_fingerprint -d Dataset042_Tiny" in capsys.readouterr().err

    save_json({"spacings": [[2.0, 1.0, 1.0]]}, dataset / "dataset_fingerprint.json")
    assert cli.main(["-d", "42", "-pl", "ExperimentPlaner"]) == 1
    assert "Did you mean: ExperimentPlanner" in capsys.readouterr().err
    assert not (dataset / "nnsslPlans.json").exists()

    assert cli.main(["-d", "42"]) == 0
    assert cli.main(["-d", "42", "-overwrite_plans_name", "otherPlans"]) == 0
    assert load_plans(DATASET).configuration("median").spacing == [2.0, 1.0, 1.0]
    assert load_plans(DATASET, "otherPlans").plans_name == "otherPlans"

    monkeypatch.delenv("nnssl_preprocessed")
    capsys.readouterr()
    assert cli.main(["-d", DATASET]) == 1
    assert "export nnssl_preprocessed=" in capsys.readouterr().err
