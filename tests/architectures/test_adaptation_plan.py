"""Adaptation plan: exact upstream keys, JSON/torch.load safety, and strict loading into the downstream network."""

from __future__ import annotations

import copy
import json
import pydoc

import pytest
import torch

from nnssl.architectures import ARCHITECTURES, build_network
from nnssl.architectures.adaptation_plan import (
    ADAPTATION_PLAN_KEYS,
    build_adaptation_plan,
    build_downstream_network,
    pretrain_patch_size,
    verify_adaptation_plan,
)


def _plans() -> dict:
    config = {
        "data_identifier": "nnsslPlans_onemmiso",
        "preprocessor_name": "DefaultPreprocessor",
        "spacing_style": "onemmiso",
        "normalization_schemes": ["ZScoreNormalization"],
        "use_mask_for_norm": [False],
        "spacing": [1.0, 1.0, 1.0],
        "patch_size": [160, 160, 160],
    }
    return {
        "dataset_name": "Dataset745_OpenMind",
        "plans_name": "nnsslPlans",
        "original_median_spacing_after_transp": [1.2, 1.0, 1.0],
        "transpose_forward": [0, 1, 2],
        "configurations": {
            "onemmiso": config,
            "median": {**config, "spacing": [1.2, 1.0, 1.0]},
            "noresample": {**config, "spacing": None},
        },
    }


def _plan_for(name: str, patch: tuple[int, int, int], in_channels: int = 1) -> dict:
    return build_adaptation_plan(ARCHITECTURES.get(name), _plans(), "onemmiso", patch, in_channels)


@pytest.fixture(scope="module")
def resenc_l_weights() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return build_network("ResEncL", 1, 1, (64, 64, 64)).state_dict()


@pytest.fixture(scope="module")
def primus_m_weights() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return build_network("PrimusM", 1, 1, (32, 32, 32)).state_dict()


def _tiny_weights(name: str, patch=(32, 32, 32), in_channels: int = 1) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return build_network(name, in_channels, 1, patch).state_dict()


# ----------------------------------------------------------------------------- plan contents


def test_plan_has_exactly_upstreams_keys_and_only_the_used_configuration():
    plan = _plan_for("ResEncL", (64, 96, 64))
    assert list(plan) == list(ADAPTATION_PLAN_KEYS)
    assert plan["architecture_plans"] == {
        "arch_class_name": "ResEncL",
        "arch_kwargs": None,
        "arch_kwargs_requiring_import": None,
    }
    assert list(plan["pretrain_plan"]["configurations"]) == ["onemmiso"]
    used = plan["pretrain_plan"]["configurations"]["onemmiso"]
    assert used["patch_size"] == [64, 96, 64]
    assert used["spacing"] == [1, 1, 1] and all(type(v) is int for v in used["spacing"])
    assert plan["pretrain_plan"]["original_median_spacing_after_transp"] == [1.2, 1, 1]
    assert plan["pretrain_num_input_channels"] == 1
    assert plan["recommended_downstream_patchsize"] == [160, 160, 160]
    assert plan["key_to_encoder"] == "encoder.stages"
    assert plan["key_to_stem"] == "encoder.stem"
    assert plan["keys_to_in_proj"] == ["encoder.stem.convs.0.conv", "encoder.stem.convs.0.all_modules.0"]
    assert plan["key_to_lpe"] is None
    assert pretrain_patch_size(plan) == (64, 96, 64)
    # the input plans are untouched
    assert len(_plans()["configurations"]) == 3


def test_primus_plan_keys():
    plan = _plan_for("PrimusM", (32, 32, 32))
    assert plan["architecture_plans"]["arch_class_name"] == "PrimusM"
    assert plan["architecture_plans"]["arch_kwargs"] is None
    assert plan["key_to_encoder"] == "eva"
    assert plan["key_to_stem"] == "down_projection"
    assert plan["keys_to_in_proj"] == ["down_projection.proj"]
    assert plan["key_to_lpe"] == "eva.pos_embed"


def test_unknown_configuration_is_named():
    with pytest.raises(KeyError, match="'3d_fullres' is not in the plans"):
        build_adaptation_plan(ARCHITECTURES.get("ResEncL"), _plans(), "3d_fullres", (64, 64, 64), 1)


def test_dynamic_resenc_tiny_plan_is_rebuildable_by_pydoc():
    plan = _plan_for("ResEncTiny", (32, 32, 32))
    arch = plan["architecture_plans"]
    assert arch["arch_class_name"] == "ResidualEncoderUNet"
    kwargs = arch["arch_kwargs"]
    assert sorted(arch["arch_kwargs_requiring_import"]) == ["conv_op", "dropout_op", "nonlin", "norm_op"]
    assert kwargs["conv_op"] == "torch.nn.modules.conv.Conv3d"
    assert kwargs["norm_op"] == "torch.nn.modules.instancenorm.InstanceNorm3d"
    assert kwargs["nonlin"] == "torch.nn.modules.activation.LeakyReLU"
    assert kwargs["dropout_op"] is None
    for key in ("conv_op", "norm_op", "nonlin"):
        assert isinstance(pydoc.locate(kwargs[key]), type)
    assert kwargs["n_stages"] == 4 and kwargs["features_per_stage"] == [8, 16, 32, 64]
    downstream = build_downstream_network(plan, num_classes=3)
    pretrain = build_network("ResEncTiny", 1, 1, (32, 32, 32))
    encoder_keys = {k for k in pretrain.state_dict() if k.startswith("encoder.")}
    assert encoder_keys == {k for k in downstream.state_dict() if k.startswith("encoder.")}


def test_dynamic_primus_tiny_plan_records_class_path_and_input_shape():
    plan = _plan_for("PrimusTiny", (32, 48, 32))
    arch = plan["architecture_plans"]
    assert arch["arch_class_name"] == "dynamic_network_architectures.architectures.primus.Primus"
    assert arch["arch_kwargs"]["input_shape"] == [32, 48, 32]
    assert arch["arch_kwargs"]["embed_dim"] == 72
    downstream = build_downstream_network(plan)
    assert downstream.eva.pos_embed.shape == (1, 4 * 6 * 4, 72)


def test_plan_is_json_safe_and_survives_weights_only_torch_load(tmp_path):
    for name, patch in (("ResEncL", (64, 64, 64)), ("PrimusM", (32, 32, 32)), ("ResEncTiny", (32,) * 3)):
        plan = _plan_for(name, patch)
        assert json.loads(json.dumps(plan, allow_nan=False)) == plan
    plan = _plan_for("PrimusTiny", (32, 32, 32))
    weights = _tiny_weights("PrimusTiny")
    path = tmp_path / "checkpoint_final.pth"
    torch.save({"network_weights": weights, "nnssl_adaptation_plan": plan}, path)
    loaded = torch.load(path, weights_only=True, map_location="cpu")
    assert loaded["nnssl_adaptation_plan"] == plan
    verify_adaptation_plan(loaded["nnssl_adaptation_plan"], loaded["network_weights"])


# ----------------------------------------------------------------------------- strict verification


def test_real_resenc_l_checkpoint_loads_strictly(resenc_l_weights):
    plan = _plan_for("ResEncL", (64, 64, 64))
    verify_adaptation_plan(plan, resenc_l_weights)
    # strictness is real: one missing encoder tensor fails and is named
    broken = dict(resenc_l_weights)
    del broken["encoder.stages.3.blocks.2.conv1.conv.weight"]
    with pytest.raises(RuntimeError, match=r"missing keys \['3.blocks.2.conv1.conv.weight'\]"):
        verify_adaptation_plan(plan, broken)


def test_real_primus_m_checkpoint_loads_strictly(primus_m_weights):
    plan = _plan_for("PrimusM", (32, 32, 32))
    verify_adaptation_plan(plan, primus_m_weights)


def test_primus_pos_embed_must_match_the_pretrain_patch():
    weights = _tiny_weights("PrimusTiny", (32, 32, 32))
    plan = _plan_for("PrimusTiny", (32, 32, 48))  # claims a larger patch than the weights saw
    with pytest.raises(RuntimeError, match=r"pos_embed: checkpoint \(1, 64, 72\) vs network \(1, 96, 72\)"):
        verify_adaptation_plan(plan, weights)


@pytest.mark.parametrize("name", ["ResEncTiny", "PrimusTiny"])
def test_tiny_checkpoints_load_strictly(name):
    verify_adaptation_plan(_plan_for(name, (32, 32, 32)), _tiny_weights(name))


def test_wrong_key_to_encoder_is_named():
    plan = _plan_for("ResEncTiny", (32, 32, 32))
    plan["key_to_encoder"] = "encoder.stage"
    with pytest.raises(RuntimeError, match="key_to_encoder 'encoder.stage' is not a submodule"):
        verify_adaptation_plan(plan, _tiny_weights("ResEncTiny"))


def test_wrong_architecture_is_named():
    plan = _plan_for("PrimusTiny", (32, 32, 32))
    with pytest.raises(RuntimeError, match="no key starting with 'eva.'"):
        verify_adaptation_plan(plan, _tiny_weights("ResEncTiny"))
    plan = _plan_for("ResEncTiny", (32, 32, 32))
    plan["architecture_plans"]["arch_kwargs"]["features_per_stage"] = [8, 16, 32, 48]
    with pytest.raises(RuntimeError, match="shape mismatches"):
        verify_adaptation_plan(plan, _tiny_weights("ResEncTiny"))


def test_unknown_arch_class_and_bad_import_are_named():
    plan = _plan_for("ResEncTiny", (32, 32, 32))
    unknown = copy.deepcopy(plan)
    unknown["architecture_plans"]["arch_class_name"] = "ResEncXL"
    with pytest.raises(RuntimeError, match="'ResEncXL' is neither a preset"):
        verify_adaptation_plan(unknown, _tiny_weights("ResEncTiny"))
    bad_import = copy.deepcopy(plan)
    bad_import["architecture_plans"]["arch_kwargs"]["norm_op"] = "torch.nn.InstanceNorm9d"
    with pytest.raises(RuntimeError, match=r"arch_kwargs\['norm_op'\] = 'torch.nn.InstanceNorm9d'"):
        verify_adaptation_plan(bad_import, _tiny_weights("ResEncTiny"))


def test_in_channel_mismatch_fails():
    plan = _plan_for("ResEncTiny", (32, 32, 32), in_channels=1)
    with pytest.raises(RuntimeError, match=r"convs.0.conv.weight: checkpoint \(8, 2, 3, 3, 3\)"):
        verify_adaptation_plan(plan, _tiny_weights("ResEncTiny", in_channels=2))


def test_missing_plan_key_and_wrapped_weights_fail():
    plan = _plan_for("ResEncTiny", (32, 32, 32))
    weights = _tiny_weights("ResEncTiny")
    incomplete = {k: v for k, v in plan.items() if k != "key_to_stem"}
    with pytest.raises(RuntimeError, match=r"missing the keys \['key_to_stem'\]"):
        verify_adaptation_plan(incomplete, weights)
    compiled = {f"_orig_mod.{k}": v for k, v in weights.items()}
    with pytest.raises(RuntimeError, match="torch.compile/DDP wrapper"):
        verify_adaptation_plan(plan, compiled)
    lpe = _plan_for("PrimusTiny", (32, 32, 32))
    primus_weights = _tiny_weights("PrimusTiny")
    del primus_weights["eva.pos_embed"]
    with pytest.raises(RuntimeError, match=r"missing keys \['pos_embed'\]"):
        verify_adaptation_plan(lpe, primus_weights)
