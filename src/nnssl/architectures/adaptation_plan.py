"""The adaptation plan: what nnU-Net needs to fine-tune from an nnssl checkpoint, and its strict check.

The plan is stored as ``adaptation_plan.json`` in the run folder and under the checkpoint key
``nnssl_adaptation_plan`` (beside ``network_weights``). Its keys are upstream's (upstream-nnssl.md 6.3)::

    architecture_plans: {arch_class_name, arch_kwargs, arch_kwargs_requiring_import}
    pretrain_plan: the plans dict with only the configuration used; its patch_size = what the model saw
    pretrain_num_input_channels, recommended_downstream_patchsize,
    key_to_encoder, key_to_stem, keys_to_in_proj, key_to_lpe

``arch_class_name`` is a preset nnU-Net builds by name (``ResEncL``, ``PrimusS``/``B``/``M``/``L``; then
``arch_kwargs`` is null) or a dynamic class (``ResidualEncoderUNet`` or a dotted path such as
``dynamic_network_architectures.architectures.primus.Primus``) built as
``cls(input_channels=..., num_classes=..., **arch_kwargs)`` after ``pydoc.locate`` of every kwarg named
in ``arch_kwargs_requiring_import``.

:func:`verify_adaptation_plan` rebuilds the downstream network from the plan alone and loads the
``key_to_encoder`` and ``key_to_stem`` weights into the corresponding submodules with ``strict=True``, as
nnU-Net's ``PretrainedTrainer`` does. Primus' ``eva.pos_embed`` has one row per token, so its shape
depends on the patch size; nnU-Net interpolates it when the downstream patch differs, and the check
builds the downstream network with the pre-training patch size (``pretrain_plan`` configuration).
"""

from __future__ import annotations

import copy
import inspect
import logging
import pydoc
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from nnssl.architectures.primus import PRIMUS_PRESET_CLASSES, build_primus_preset
from nnssl.architectures.resenc import (
    RESENC_L_KWARGS,
    build_residual_encoder_unet,
    class_path,
    resolve_class_kwargs,
)
from nnssl.architectures.spec import ArchitectureSpec
from nnssl.serialization import integral_floats_to_int, to_jsonable

logger = logging.getLogger(__name__)

ADAPTATION_PLAN_KEYS: tuple[str, ...] = (
    "architecture_plans",
    "pretrain_plan",
    "pretrain_num_input_channels",
    "recommended_downstream_patchsize",
    "key_to_encoder",
    "key_to_stem",
    "keys_to_in_proj",
    "key_to_lpe",
)
#: Names nnU-Net's downstream builds without arch_kwargs.
PRESET_NAMES: tuple[str, ...] = ("ResEncL", *PRIMUS_PRESET_CLASSES)
_DNA_ARCH_MODULES = (
    "dynamic_network_architectures.architectures.unet",
    "dynamic_network_architectures.architectures.primus",
    "dynamic_network_architectures.architectures.resnet",
)


def _jsonable_kwargs(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """Class objects become dotted paths; everything else goes through the JSON serializer."""
    out = {}
    for key, value in kwargs.items():
        out[key] = class_path(value) if isinstance(value, type) else to_jsonable(copy.deepcopy(value))
    return out


def locate_architecture_class(arch_class_name: str) -> type[nn.Module]:
    """The class of a dynamic ``arch_class_name``: a dotted path, or a class name inside dna's architectures."""
    candidates = [arch_class_name] if "." in arch_class_name else []
    candidates += [f"{module}.{arch_class_name}" for module in _DNA_ARCH_MODULES if "." not in arch_class_name]
    for candidate in candidates:
        located = pydoc.locate(candidate)
        if isinstance(located, type):
            return located
    raise RuntimeError(
        f"adaptation plan: architecture_plans.arch_class_name '{arch_class_name}' is neither a preset "
        f"({', '.join(PRESET_NAMES)}) nor an importable class (tried {candidates}). Fix the name or install "
        "the package that provides it."
    )


def build_adaptation_plan(
    spec: ArchitectureSpec,
    plan_dict: Mapping[str, Any] | Any,
    configuration_name: str,
    patch_size: Sequence[int],
    in_channels: int,
) -> dict[str, Any]:
    """The adaptation plan for a network of ``spec`` pre-trained on ``patch_size`` crops of ``configuration_name``.

    ``plan_dict`` is the preprocessing plans dict (or a dataclass serialisable by ``to_jsonable``) with a
    ``configurations`` mapping; only ``configuration_name`` is kept and its ``patch_size`` is set to
    ``patch_size``. For a dynamic class whose constructor takes ``input_shape`` (Primus), ``arch_kwargs``
    gets ``input_shape = patch_size``. Integral floats become ints (spacing [1.0, ...] -> [1, ...]).
    """
    plan = to_jsonable(plan_dict)
    if not isinstance(plan, dict) or not isinstance(plan.get("configurations"), dict):
        raise ValueError("plan_dict must be a plans dict with a 'configurations' mapping (nnsslPlans.json).")
    configurations = plan["configurations"]
    if configuration_name not in configurations:
        raise KeyError(
            f"Configuration '{configuration_name}' is not in the plans (available: {sorted(configurations)}). "
            "Pass the configuration the data was preprocessed with (-c)."
        )
    patch = [int(p) for p in patch_size]
    pretrain_plan = copy.deepcopy(plan)
    used = copy.deepcopy(configurations[configuration_name])
    used["patch_size"] = patch
    pretrain_plan["configurations"] = {configuration_name: used}

    if spec.arch_class_name in PRESET_NAMES:
        arch_kwargs, requiring_import = None, None
    else:
        if spec.arch_kwargs is None:
            raise ValueError(
                f"Architecture '{spec.name}' uses the dynamic class '{spec.arch_class_name}' but has no arch_kwargs."
            )
        arch_kwargs = _jsonable_kwargs(spec.arch_kwargs)
        cls = locate_architecture_class(spec.arch_class_name)
        if "input_shape" in inspect.signature(cls.__init__).parameters:
            arch_kwargs["input_shape"] = patch
        requiring_import = list(spec.arch_kwargs_requiring_import)

    adaptation_plan = {
        "architecture_plans": {
            "arch_class_name": spec.arch_class_name,
            "arch_kwargs": arch_kwargs,
            "arch_kwargs_requiring_import": requiring_import,
        },
        "pretrain_plan": pretrain_plan,
        "pretrain_num_input_channels": int(in_channels),
        "recommended_downstream_patchsize": [int(p) for p in spec.downstream_patch_size],
        "key_to_encoder": spec.key_to_encoder,
        "key_to_stem": spec.key_to_stem,
        "keys_to_in_proj": list(spec.keys_to_in_proj),
        "key_to_lpe": spec.key_to_lpe,
    }
    return integral_floats_to_int(adaptation_plan)


def _check_plan_keys(adaptation_plan: Mapping[str, Any]) -> None:
    missing = [k for k in ADAPTATION_PLAN_KEYS if k not in adaptation_plan]
    if missing:
        raise RuntimeError(
            f"adaptation plan is missing the keys {missing}; expected {list(ADAPTATION_PLAN_KEYS)}. "
            "Rebuild it with nnssl.architectures.adaptation_plan.build_adaptation_plan."
        )
    arch = adaptation_plan["architecture_plans"]
    if not isinstance(arch, Mapping) or "arch_class_name" not in arch:
        raise RuntimeError("adaptation plan: 'architecture_plans' must be a dict with 'arch_class_name'.")


def pretrain_patch_size(adaptation_plan: Mapping[str, Any]) -> tuple[int, int, int]:
    """The patch size the network saw in pre-training (the single ``pretrain_plan`` configuration)."""
    configurations = adaptation_plan["pretrain_plan"].get("configurations", {})
    if len(configurations) != 1:
        raise RuntimeError(
            f"adaptation plan: pretrain_plan must hold exactly one configuration, found {sorted(configurations)}."
        )
    (config,) = configurations.values()
    return tuple(int(p) for p in config["patch_size"])  # type: ignore[return-value]


def build_downstream_network(
    adaptation_plan: Mapping[str, Any], num_classes: int = 2, patch_size: Sequence[int] | None = None
) -> nn.Module:
    """The network nnU-Net's fine-tuning builds from ``adaptation_plan`` alone.

    Presets are built by name (Primus with drop-path 0); dynamic classes with
    ``cls(input_channels=pretrain_num_input_channels, num_classes=num_classes, **arch_kwargs)`` after
    resolving ``arch_kwargs_requiring_import`` with ``pydoc.locate``. ``patch_size`` defaults to the
    pre-training patch size (it sets Primus' token grid; pass the downstream patch to build that instead).
    """
    _check_plan_keys(adaptation_plan)
    arch = adaptation_plan["architecture_plans"]
    name = arch["arch_class_name"]
    in_channels = int(adaptation_plan["pretrain_num_input_channels"])
    patch = tuple(int(p) for p in (patch_size if patch_size is not None else pretrain_patch_size(adaptation_plan)))
    if name == "ResEncL":
        return build_residual_encoder_unet(RESENC_L_KWARGS, in_channels, num_classes)
    if name in PRIMUS_PRESET_CLASSES:
        return build_primus_preset(name, in_channels, num_classes, patch, drop_path_rate=0.0)
    if arch.get("arch_kwargs") is None:
        raise RuntimeError(
            f"adaptation plan: arch_class_name '{name}' is not a preset ({', '.join(PRESET_NAMES)}) and "
            "arch_kwargs is null, so the network cannot be rebuilt."
        )
    cls = locate_architecture_class(name)
    kwargs = resolve_class_kwargs(arch["arch_kwargs"], arch.get("arch_kwargs_requiring_import") or [])
    parameters = inspect.signature(cls.__init__).parameters
    if "input_shape" in parameters:
        kwargs["input_shape"] = patch
    for key in ("patch_embed_size", "input_shape"):
        if isinstance(kwargs.get(key), list):
            kwargs[key] = tuple(kwargs[key])
    if "drop_path_rate" in parameters:
        kwargs["drop_path_rate"] = 0.0
    if "deep_supervision" in parameters:
        kwargs.setdefault("deep_supervision", False)
    network = cls(input_channels=in_channels, num_classes=num_classes, **kwargs)
    initialize = getattr(network, "initialize", None)
    if callable(initialize):
        network.apply(initialize)
    return network


def _strip_prefix(weights: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    dotted = prefix + "."
    return {k[len(dotted) :]: v for k, v in weights.items() if k.startswith(dotted)}


def _load_strict(network: nn.Module, key: str, role: str, weights: Mapping[str, torch.Tensor]) -> None:
    try:
        target = network.get_submodule(key)
    except AttributeError as err:
        raise RuntimeError(
            f"adaptation plan: {role} '{key}' is not a submodule of the downstream "
            f"{type(network).__name__}. Check architecture_plans.arch_class_name and {role}."
        ) from err
    given = _strip_prefix(weights, key)
    if not given:
        sample = sorted(weights)[:5]
        raise RuntimeError(
            f"adaptation plan: network_weights has no key starting with '{key}.' ({role}); its keys look like "
            f"{sample}. Check {role} or save the uncompiled, unwrapped network's state_dict."
        )
    expected = target.state_dict()
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    mismatched = [
        f"{k}: checkpoint {tuple(given[k].shape)} vs network {tuple(expected[k].shape)}"
        for k in sorted(set(given) & set(expected))
        if tuple(given[k].shape) != tuple(expected[k].shape)
    ]
    if missing or unexpected or mismatched:
        raise RuntimeError(
            f"adaptation plan: network_weights['{key}.*'] ({role}) do not load strictly into the downstream "
            f"{type(network).__name__}: missing keys {missing[:10]}{' ...' if len(missing) > 10 else ''} "
            f"({len(missing)}), unexpected keys {unexpected[:10]}{' ...' if len(unexpected) > 10 else ''} "
            f"({len(unexpected)}), shape mismatches {mismatched[:10]} ({len(mismatched)}). The checkpoint was "
            "not produced by the architecture the plan names."
        )
    target.load_state_dict(given, strict=True)


def load_encoder_weights(
    network: nn.Module, adaptation_plan: Mapping[str, Any], network_weights: Mapping[str, torch.Tensor]
) -> None:
    """Load the ``key_to_encoder`` and ``key_to_stem`` weights of ``network_weights`` strictly into ``network``.

    What nnU-Net's fine-tuning transfers, and all that feature extraction needs (the decoder is not loaded). Keys of
    a torch.compile / DDP wrapper (``_orig_mod.``, ``module.``) are accepted here.
    """
    weights = dict(network_weights)
    for prefix in ("_orig_mod.", "module."):
        if weights and all(k.startswith(prefix) for k in weights):
            weights = {k[len(prefix) :]: v for k, v in weights.items()}
    _load_strict(network, adaptation_plan["key_to_encoder"], "key_to_encoder", weights)
    _load_strict(network, adaptation_plan["key_to_stem"], "key_to_stem", weights)


def verify_adaptation_plan(adaptation_plan: Mapping[str, Any], network_weights: Mapping[str, torch.Tensor]) -> None:
    """Raise RuntimeError unless ``network_weights`` transfer into the network the plan describes.

    Builds the downstream network from the plan alone (at the pre-training patch size), loads
    ``key_to_encoder`` and ``key_to_stem`` weights strictly, and checks that every ``keys_to_in_proj``
    weight and ``key_to_lpe`` exist in ``network_weights``.
    """
    _check_plan_keys(adaptation_plan)
    weights = dict(network_weights)
    wrapped = [p for p in ("_orig_mod.", "module.") if weights and all(k.startswith(p) for k in weights)]
    if wrapped:
        raise RuntimeError(
            f"network_weights keys all start with '{wrapped[0]}' (a torch.compile/DDP wrapper). Save "
            "the unwrapped module's state_dict so nnU-Net can load it."
        )
    try:
        network = build_downstream_network(adaptation_plan)
    except (TypeError, ValueError, ImportError, AssertionError) as err:
        raise RuntimeError(
            f"adaptation plan: cannot build '{adaptation_plan['architecture_plans'].get('arch_class_name')}' "
            f"from architecture_plans: {err}"
        ) from err
    _load_strict(network, adaptation_plan["key_to_encoder"], "key_to_encoder", weights)
    _load_strict(network, adaptation_plan["key_to_stem"], "key_to_stem", weights)
    for key in adaptation_plan["keys_to_in_proj"]:
        if f"{key}.weight" not in weights:
            raise RuntimeError(
                f"adaptation plan: keys_to_in_proj entry '{key}' has no '{key}.weight' in network_weights."
            )
    lpe = adaptation_plan["key_to_lpe"]
    if lpe is not None and lpe not in weights:
        raise RuntimeError(f"adaptation plan: key_to_lpe '{lpe}' is not in network_weights.")
    logger.info(
        "Adaptation plan verified: %s encoder '%s' and stem '%s' load strictly.",
        adaptation_plan["architecture_plans"]["arch_class_name"],
        adaptation_plan["key_to_encoder"],
        adaptation_plan["key_to_stem"],
    )


__all__ = [
    "ADAPTATION_PLAN_KEYS",
    "PRESET_NAMES",
    "build_adaptation_plan",
    "build_downstream_network",
    "load_encoder_weights",
    "locate_architecture_class",
    "pretrain_patch_size",
    "verify_adaptation_plan",
]
