"""Every configuration class validates itself; bad settings are refused before a run creates anything."""

from __future__ import annotations

import dataclasses

import pytest

from nnssl.cli.train import main
from nnssl.config import ConfigError, DataConfig, EvalConfig, OptimConfig, RunConfig, TrainConfig
from nnssl.methods import METHODS
from nnssl.presets import PRESETS, resolve_config

#: One value per method that its configuration must refuse, with the key the message has to name.
BAD_METHOD_VALUES = {
    "MAE": ("BaseMAETrainer", "method.mask_ratio=1.5", "method.mask_ratio"),
    "AlignedMAE": ("AlignedMAEFTTrainer", "method.crop_size=100,100,100", "method.crop_size"),
    "DINO": ("DINOResEncTrainer", "method.ibot=true", "method.ibot"),
    "SimCLR": ("SimCLRTrainer", "method.min_overlap=2", "method.min_overlap"),
    "VoCo": ("VoCoTrainer", "method.num_targets=0", "method.num_targets"),
    "SimMIM": ("SimMIMEvaTrainer", "method.mask_ratio=0", "method.mask_ratio"),
    "SparK": ("SparkMAETrainer", "method.mask_ratio=1.5", "method.mask_ratio"),
    "ModelsGenesis": ("ModelGenesisTrainer", "method.max_flips=-1", "method.max_flips"),
    "VolumeFusion": ("VolumeFusionTrainer", "method.num_classes=1", "method.num_classes"),
    "SwinUNETR": ("SwinUNETRTrainer", "method.max_drop=1.5", "method.max_drop"),
    "GVSL": ("GVSLTrainer", "method.ncc_window=4", "method.ncc_window"),
    "PCRLv2": ("PCRLv2Trainer", "method.min_iou=0", "method.min_iou"),
}


def test_every_configuration_class_has_a_validate_hook() -> None:
    for cls in (TrainConfig, OptimConfig, DataConfig, EvalConfig, RunConfig):
        assert callable(getattr(cls, "validate", None)), cls
    shipped = {n for n in METHODS.names() if METHODS.get(n).__module__.startswith("nnssl.")}  # not test methods
    assert set(BAD_METHOD_VALUES) == shipped
    for name in shipped:
        assert callable(getattr(METHODS.get(name).config_cls, "validate", None)), name


def test_every_preset_is_valid() -> None:
    for name in PRESETS:
        resolve_config(name).validate()


@pytest.mark.parametrize("method", sorted(BAD_METHOD_VALUES))
def test_each_method_config_refuses_a_bad_value(method: str) -> None:
    preset, override, key = BAD_METHOD_VALUES[method]
    assert resolve_config(preset).method == method
    with pytest.raises(ConfigError, match=f"'{key}' = .* is not allowed: it must be"):
        resolve_config(preset, [override])


@pytest.mark.parametrize(
    ("preset", "override", "expected"),
    [
        ("BaseMAETrainer", "method.mask_ratio=1.5", "'method.mask_ratio' = 1.5 is not allowed: it must be in (0, 1)"),
        ("SimCLRTrainer", "method.min_overlap=2", "'method.min_overlap' = 2.0 is not allowed: it must be in [0, 1]"),
        ("BaseMAETrainer", "train.patch_size=50,50,50", "three positive multiples of 32 for ResEncL"),
        ("BaseEvaMAETrainer", "train.patch_size=50,50,50", "three positive multiples of 8 for PrimusM"),
        ("BaseMAETrainer", "data.num_workers=-1", "'data.num_workers' = -1 is not allowed: it must be >= 0"),
        ("BaseMAETrainer", "optim.betas=0.9,1.5", "'optim.betas' = (0.9, 1.5) is not allowed"),
        ("BaseMAETrainer", "data.rotation_p=2", "a probability in [0, 1]"),
        ("VoCoTrainer", "train.patch_size=64,64,64", "a whole number of method.crop_size=(64, 64, 64) crops"),
        ("BaseMAETrainer", "train.trackers=tensorbard", "'train.trackers' = ('tensorbard',) is not allowed"),
        ("BaseMAETrainer", "data.filters=iqs<2", "'data.filters': 'iqs<2' is not a filter"),
        ("BaseMAETrainer", "eval.overlap=1", "'eval.overlap' = 1.0 is not allowed: it must be in [0, 1)"),
    ],
)
def test_bad_values_name_key_value_and_what_is_allowed(preset: str, override: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        resolve_config(preset, [override])
    assert expected in str(info.value)


@pytest.mark.parametrize(
    "args",
    [
        ["1", "onemmiso", "--set", "method.mask_ratio=1.5"],
        ["1", "onemmiso", "-tr", "SimCLRTrainer", "--set", "method.min_overlap=2"],
        ["1", "onemmiso", "--set", "train.patch_size=50,50,50"],
        ["1", "onemmiso", "--set", "data.num_workers=-1"],
        ["abc", "onemmiso"],
    ],
)
def test_bad_settings_are_refused_before_anything_is_created(demo_raw_dataset, nnssl_env, capsys, args) -> None:
    results = nnssl_env["nnssl_results"]
    assert main([*args, "-device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("nnssl_train: error:") and "Traceback" not in err
    assert list(results.iterdir()) == []  # no run folder, no log


def test_dataset_name_error_says_what_to_give(nnssl_env, capsys) -> None:
    assert main(["abc", "onemmiso", "-device", "cpu"]) == 1
    assert "DATASET 'abc'" in capsys.readouterr().err


def test_method_hooks_receive_the_whole_run_config() -> None:
    cfg = resolve_config("SimCLRTrainer")
    bigger_crop = dataclasses.replace(cfg.method_cfg, crop_size=(256, 256, 64))
    with pytest.raises(ConfigError, match="at most train.patch_size=\\(192, 192, 64\\)"):
        dataclasses.replace(cfg, method_cfg=bigger_crop).validate()
