"""The contract every registered method keeps, on both backbone families (a method without tests of its own is still
exercised here): build from its Demo preset, one forward/backward on a tiny input with a finite loss that depends on
the input, gradients reach the backbone and every trainable parameter, ``backbone()`` loads strictly into the
downstream network through the adaptation plan, the configuration round-trips, every preset of the method resolves.
A method bound to one family (SparK: sparse convolution on CNNs) has no Demo preset on the other and must refuse it at
configuration validation with an error naming the ``architecture`` field.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from nnssl.architectures import ARCHITECTURES
from nnssl.architectures.adaptation_plan import build_adaptation_plan, verify_adaptation_plan
from nnssl.config import ConfigError, architecture_of
from nnssl.engine.trainer import parameters_without_gradient
from nnssl.methods import METHODS
from nnssl.presets import config_from_dict, config_to_dict, preset_table, resolve_config

#: The tiny architecture of each backbone family every method must run on.
FAMILY_ARCHITECTURES = ("ResEncTiny", "PrimusTiny")
PLANS = {
    "configurations": {
        "onemmiso": {
            "data_identifier": "nnsslPlans_onemmiso",
            "preprocessor_name": "DefaultPreprocessor",
            "spacing_style": "onemmiso",
            "normalization_schemes": ["ZScoreNormalization"],
            "use_mask_for_norm": [False],
            "spacing": [1.0, 1.0, 1.0],
            "patch_size": [160, 160, 160],
        }
    }
}


def demo_presets(method: str, architecture: str) -> list[str]:
    """Every CPU demo preset of ``method`` on ``architecture``, sorted."""
    return sorted(
        name for name, m, arch, _ in preset_table() if m == method and arch == architecture and name.startswith("Demo")
    )


def demo_preset(method: str, architecture: str) -> str:
    """The CPU demo preset of ``method`` on ``architecture`` (every method must have one per tiny backbone)."""
    names = demo_presets(method, architecture)
    if not names:
        pytest.fail(
            f"Method '{method}' has no Demo preset on {architecture}: register one (e.g. Demo{method}_{architecture}) "
            "so the method is exercised on every backbone family."
        )
    return sorted(names)[0]


def build(method: str, architecture: str):
    cfg = resolve_config(demo_preset(method, architecture))
    torch.manual_seed(0)
    instance = METHODS.get(cfg.method)(cfg.method_cfg, architecture_of(cfg), cfg.train.patch_size)
    instance.configure_schedule(10, 100)
    return instance, cfg


def batch(method, cfg, seed: int, size: int = 2) -> dict[str, torch.Tensor]:
    """``size`` samples of random volumes of the preset's patch size through the method's training transform."""
    np.random.seed(seed)
    rng = np.random.default_rng(seed)
    transform = method.train_transform()
    samples = []
    for _ in range(size):
        sample = {"image": rng.normal(size=(1, *cfg.train.patch_size)).astype(np.float32)}
        samples.append(transform(sample) if transform is not None else sample)
    return {k: torch.as_tensor(np.stack([s[k] for s in samples])) for k in samples[0]}


#: Methods the engine tests register for themselves (tests/engine/engine_toy.py: two convolutions on a toy
#: architecture, no backbone interface); every other registered method, plugins included, must keep the contract.
TEST_FIXTURE_METHODS = {"Toy"}
METHOD_NAMES = [m for m in METHODS.names() if m not in TEST_FIXTURE_METHODS]
CASES = [(m, a) for m in METHOD_NAMES for a in FAMILY_ARCHITECTURES]


def refuses_family(method: str, architecture: str) -> bool:
    """Whether ``method`` refuses ``architecture`` at configuration validation with a ConfigError naming the
    ``architecture`` field (methods bound to one family, e.g. SparK's sparse convolutions on CNNs)."""
    others = [name for a in FAMILY_ARCHITECTURES if a != architecture for name in demo_presets(method, a)]
    if not others:
        return False
    cfg = dataclasses.replace(resolve_config(others[0]), architecture=architecture)
    try:
        cfg.validate()
    except ConfigError as err:
        return "'architecture'" in str(err)
    return False


@pytest.mark.parametrize(("method_name", "architecture"), CASES)
def test_method_contract(method_name: str, architecture: str) -> None:
    if not demo_presets(method_name, architecture) and refuses_family(method_name, architecture):
        return  # a method bound to another family: refused before anything runs (its own tests say why)
    method, cfg = build(method_name, architecture)
    method.train()
    torch.manual_seed(1)
    out = method(batch(method, cfg, seed=1))
    assert out.loss.dim() == 0 and math.isfinite(float(out.loss))
    assert all(math.isfinite(float(v)) for v in out.metrics.values()), out.metrics
    out.loss.backward()
    # every trainable parameter takes part (DDP runs without find_unused_parameters)
    assert parameters_without_gradient(method) == []
    # gradients reach the encoder weights that are saved downstream
    arch = architecture_of(cfg)  # with the preset's arch.* keys
    encoder = [p for n, p in method.backbone().named_parameters() if n.startswith(arch.key_to_encoder)]
    assert encoder and sum(float(p.grad.abs().sum()) for p in encoder if p.grad is not None) > 0
    # the loss depends on the input (eval mode: no running statistics move between the calls)
    method.eval()
    losses = []
    with torch.no_grad():
        for seed in (1, 1, 2):
            torch.manual_seed(1)
            losses.append(float(method(batch(method, cfg, seed=seed)).loss))
    assert losses[0] == losses[1]
    assert losses[2] != pytest.approx(losses[0], rel=1e-6, abs=1e-9)
    # the checkpoint's network loads strictly into the downstream network built from the adaptation plan alone
    plan = build_adaptation_plan(arch, PLANS, "onemmiso", method.network_patch_size(), 1)
    verify_adaptation_plan(plan, method.backbone().state_dict())
    # the configuration round-trips through its JSON form
    assert config_from_dict(config_to_dict(cfg)) == cfg


@pytest.mark.parametrize("method_name", METHOD_NAMES)
def test_every_preset_of_the_method_resolves(method_name: str) -> None:
    names = [name for name, m, _, _ in preset_table() if m == method_name]
    assert names, f"Method '{method_name}' has no preset."
    for name in names:
        cfg = resolve_config(name)
        assert isinstance(cfg.method_cfg, METHODS.get(method_name).config_cls)
        assert cfg.architecture in ARCHITECTURES
