"""Presets resolve to the upstream hyper-parameters; overrides coerce types and reject unknown keys."""

from __future__ import annotations

import dataclasses

import pytest

from nnssl.config import RunConfig
from nnssl.overrides import ConfigError, apply_overrides, coerce_value, parse_override
from nnssl.presets import PRESETS, Preset, resolve_config


@dataclasses.dataclass
class _MethodCfg:
    mask_ratio: float = 0.75
    block_size: int = 16
    name: str | None = None


def _cfg(preset: str = "BaseMAETrainer", *overrides: str) -> RunConfig:
    return resolve_config(preset, list(overrides), method_config_cls=_MethodCfg)


def test_base_presets_carry_upstream_defaults() -> None:
    cnn = _cfg("BaseMAETrainer")
    assert (cnn.method, cnn.architecture) == ("MAE", "ResEncL")
    assert (cnn.optim.name, cnn.optim.lr, cnn.optim.momentum, cnn.optim.nesterov) == ("sgd", 1e-2, 0.99, True)
    assert (cnn.optim.weight_decay, cnn.optim.schedule, cnn.optim.poly_exponent) == (3e-5, "poly", 0.9)
    assert (cnn.train.grad_clip, cnn.train.batch_size, cnn.train.patch_size) == (12.0, 2, (160, 160, 160))
    assert (cnn.train.num_epochs, cnn.train.iterations_per_epoch, cnn.train.val_iterations) == (1000, 250, 50)
    eva = _cfg("BaseEvaMAETrainer")
    assert eva.architecture == "PrimusM"
    assert (eva.optim.name, eva.optim.lr, eva.optim.weight_decay, eva.optim.betas) == ("adamw", 3e-4, 5e-2, (0.9, 0.98))
    assert (eva.optim.schedule, eva.optim.warmup_epochs, eva.train.grad_clip) == ("warmup_poly", 50, 1.0)


def test_generated_variants_inherit() -> None:
    bs8 = _cfg("BaseEvaMAETrainer_BS8")
    assert bs8.train.batch_size == 8 and bs8.optim.name == "adamw" and bs8.architecture == "PrimusM"
    long = _cfg("BaseMAETrainer_BS8_2000ep")
    assert (long.train.batch_size, long.train.num_epochs, long.architecture) == (8, 2000, "ResEncL")
    for bs in (1, 2, 4, 8, 16, 32):
        assert _cfg(f"BaseMAETrainer_BS{bs}").train.batch_size == bs
    demo = _cfg("DemoMAE_ResEncTiny")
    assert demo.architecture == "ResEncTiny" and max(demo.train.patch_size) <= 48 and demo.train.batch_size == 2
    assert _cfg("DemoMAE_PrimusTiny").architecture == "PrimusTiny"


def test_every_preset_names_registered_method_and_architecture() -> None:
    from nnssl.architectures import ARCHITECTURES
    from nnssl.methods import METHODS

    for name in PRESETS:
        cfg = resolve_config(name)
        assert cfg.method in METHODS, name
        assert cfg.architecture in ARCHITECTURES, name
        assert isinstance(cfg.method_cfg, METHODS.get(cfg.method).config_cls)


def test_preset_bases_are_checked_after_registration() -> None:
    from nnssl.presets import check_preset_bases

    check_preset_bases()  # the builtin presets are consistent
    PRESETS.add("_OrphanForTest", Preset("_OrphanForTest", base="NoSuchPreset"))
    try:
        with pytest.raises(KeyError, match="'_OrphanForTest' inherits from unknown preset 'NoSuchPreset'"):
            check_preset_bases()
    finally:
        PRESETS._entries.pop("_OrphanForTest")


def test_overrides_are_coerced() -> None:
    cfg = _cfg(
        "BaseMAETrainer",
        "optim.lr=1e-3",
        "train.batch_size=4",
        "train.patch_size=96,128,160",
        "optim.nesterov=false",
        "train.grad_clip=none",
        "optim.betas=(0.8, 0.9)",
        "data.mirror_axes=[0,2]",
        "method.mask_ratio=0.6",
        "method.block_size=8",
        "method.name=null",
    )
    assert cfg.optim.lr == 1e-3 and cfg.train.batch_size == 4 and cfg.train.patch_size == (96, 128, 160)
    assert cfg.optim.nesterov is False and cfg.train.grad_clip is None and cfg.optim.betas == (0.8, 0.9)
    assert cfg.data.mirror_axes == (0, 2)
    assert cfg.method_cfg == _MethodCfg(mask_ratio=0.6, block_size=8, name=None)
    assert _cfg("BaseMAETrainer").optim.lr == 1e-2  # the registry's preset is untouched


def test_override_errors() -> None:
    with pytest.raises(ConfigError, match=r"Did you mean: optim\.lr"):
        _cfg("BaseMAETrainer", "optim.lrr=1")
    with pytest.raises(ConfigError, match="Valid keys:.*method.mask_ratio"):
        _cfg("BaseMAETrainer", "model.depth=3")
    with pytest.raises(ConfigError, match="needs an integer"):
        _cfg("BaseMAETrainer", "train.batch_size=2.5")
    with pytest.raises(ConfigError, match="needs 3 comma-separated values"):
        _cfg("BaseMAETrainer", "train.patch_size=64,64")
    with pytest.raises(ConfigError, match="cannot be None"):
        _cfg("BaseMAETrainer", "optim.lr=none")
    with pytest.raises(ConfigError, match="true or false"):
        _cfg("BaseMAETrainer", "optim.nesterov=maybe")
    with pytest.raises(ConfigError, match="train.precision"):
        _cfg("BaseMAETrainer", "train.precision=fp8")
    with pytest.raises(ConfigError, match="section.field=value"):
        parse_override("optim.lr")
    with pytest.raises(KeyError, match="Did you mean"):
        _cfg("BaseMAETrainer_BS9")


def test_coerce_value_and_dict_overrides() -> None:
    assert coerce_value("3", int, "k") == 3 and coerce_value("1e2", int, "k") == 100
    assert coerce_value("yes", bool, "k") is True and coerce_value(2, float, "k") == 2.0
    cfg = apply_overrides(_cfg(), {"train.num_epochs": 7, "train.patch_size": [32, 32, 32]})
    assert cfg.train.num_epochs == 7 and cfg.train.patch_size == (32, 32, 32)


def test_overrides_leave_the_original_configuration_alone() -> None:
    original = _cfg()
    changed = apply_overrides(
        original, {"eval.overlap": 0.5, "arch.token_size": None, "data.num_workers": 0, "optim.lr": 0.5}
    )
    assert changed.eval.overlap == 0.5 and original.eval.overlap == 0.25
    assert original.data.num_workers != 0 or changed.data is not original.data
    assert original.optim.lr != 0.5
    for section in ("train", "optim", "data", "arch", "eval"):
        assert getattr(changed, section) is not getattr(original, section)
