"""A frozen pre-trained encoder rebuilt from a checkpoint's adaptation plan alone.

Any file holding ``network_weights`` and ``nnssl_adaptation_plan`` works: nnssl checkpoints, exports of
``nnssl_export_weights`` (``.pth`` or ``.safetensors``) and upstream's / the OpenMind release's checkpoints. The
network is rebuilt as nnU-Net's fine-tuning rebuilds it (:func:`~nnssl.architectures.adaptation_plan.
build_downstream_network`, at the pre-training patch size), the encoder and stem weights are loaded strictly
(``key_to_encoder``, ``key_to_stem``; the decoder is not needed), and the network is put behind the same backbone
interface the methods use (:mod:`nnssl.backbones`), so features are exactly what pre-training saw:
``Features.maps`` (ResEnc: every encoder stage, finest first; Primus: the token grid).
"""

from __future__ import annotations

import contextlib
import copy
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nnssl.architectures.adaptation_plan import (
    build_downstream_network,
    load_encoder_weights,
    pretrain_patch_size,
)
from nnssl.architectures.spec import ArchitectureSpec
from nnssl.backbones import FAMILIES, Backbone

logger = logging.getLogger(__name__)


def _family_of_network(network: nn.Module) -> tuple[str, int | None]:
    """``("transformer", token side)`` for Primus-like networks (an ``eva`` and a patch embedding), else ``("cnn",
    None)``."""
    if hasattr(network, "eva") and hasattr(network, "down_projection"):
        kernel = tuple(int(k) for k in network.down_projection.proj.kernel_size)
        return "transformer", kernel[0]
    if hasattr(network, "encoder") and hasattr(network.encoder, "strides"):
        return "cnn", None
    raise ValueError(
        f"{type(network).__name__} is neither a ResEnc U-Net (encoder.strides) nor a Primus (eva, down_projection); "
        "nnssl cannot extract features from it."
    )


def _spec_around(network: nn.Module, adaptation_plan: Mapping[str, Any]) -> ArchitectureSpec:
    """An :class:`ArchitectureSpec` whose ``build`` hands out ``network`` (already built and loaded)."""
    family, token_size = _family_of_network(network)
    return ArchitectureSpec(
        name=str(adaptation_plan["architecture_plans"]["arch_class_name"]).rsplit(".", 1)[-1],
        build=lambda in_channels, out_channels, patch_size: network,
        arch_class_name=str(adaptation_plan["architecture_plans"]["arch_class_name"]),
        key_to_encoder=str(adaptation_plan["key_to_encoder"]),
        key_to_stem=str(adaptation_plan["key_to_stem"]),
        keys_to_in_proj=tuple(adaptation_plan.get("keys_to_in_proj") or ()),
        key_to_lpe=adaptation_plan.get("key_to_lpe"),
        family=family,
        token_size=token_size,
        patch_multiple=token_size or 1,
    )


class FrozenEncoder:
    """An encoder in eval mode without gradients, with the geometry the sliding window needs.

    ``window`` is the pre-training patch size (the only input size a Primus' positional embedding fits; ResEnc
    accepts any multiple of its total stride, see ``window=`` of :meth:`from_network`). ``strides`` is the voxel
    stride of every map of :meth:`features`. On CUDA the encoder runs under bf16 autocast (``precision="bf16"``);
    features are returned in float32.
    """

    def __init__(
        self,
        backbone: Backbone,
        adaptation_plan: Mapping[str, Any],
        window: Sequence[int],
        device: torch.device | str = "cpu",
        precision: str = "auto",
    ) -> None:
        self.device = torch.device(device)
        self.backbone = backbone.to(self.device).eval()
        for parameter in self.backbone.parameters():
            parameter.requires_grad_(False)
        self.adaptation_plan = dict(adaptation_plan)
        self.window = tuple(int(w) for w in window)
        self.in_channels = int(adaptation_plan["pretrain_num_input_channels"])
        if precision == "auto":
            precision = "bf16" if self.device.type == "cuda" else "fp32"
        if precision not in ("bf16", "fp32"):
            raise ValueError(f"precision must be auto, bf16 or fp32, got {precision!r}")
        self.precision = precision
        shapes = backbone.map_shapes(self.window)  # known without running the network
        self.channels = tuple(int(channels) for channels, _ in shapes)
        self.strides = tuple(self.window[0] // int(grid[0]) for _, grid in shapes)
        for _, grid in shapes:
            if any(w % g for w, g in zip(self.window, grid)) or len({w // g for w, g in zip(self.window, grid)}) != 1:
                raise ValueError(f"feature map {grid} does not tile the window {self.window} with one stride")
        self.family = backbone.family

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_network(
        cls,
        network: nn.Module,
        adaptation_plan: Mapping[str, Any],
        device: torch.device | str = "cpu",
        precision: str = "auto",
        window: Sequence[int] | None = None,
    ) -> FrozenEncoder:
        """Wrap a downstream network (e.g. a copy of a training run's ``method.backbone()``) as it is."""
        spec = _spec_around(network, adaptation_plan)
        pretrain = pretrain_patch_size(adaptation_plan)
        size = tuple(int(w) for w in (window or pretrain))
        if spec.family == "transformer" and size != pretrain:
            raise ValueError(
                f"a Primus encoder only accepts its pre-training patch {pretrain} as window (its positional "
                f"embedding has one row per token); got {size}."
            )
        in_channels = int(adaptation_plan["pretrain_num_input_channels"])
        backbone = FAMILIES.get(spec.family)(spec, in_channels, size)
        return cls(backbone, adaptation_plan, size, device, precision)

    @classmethod
    def from_weights(
        cls,
        payload: Mapping[str, Any],
        device: torch.device | str = "cpu",
        precision: str = "auto",
        window: Sequence[int] | None = None,
        random_init_seed: int | None = None,
    ) -> FrozenEncoder:
        """From ``{"network_weights", "nnssl_adaptation_plan"}``; ``random_init_seed`` keeps the architecture but
        draws fresh weights (the baseline a pre-trained encoder must beat)."""
        missing = [k for k in ("network_weights", "nnssl_adaptation_plan") if k not in payload]
        if missing:
            raise KeyError(
                f"the file has no {' and no '.join(missing)}: feature extraction needs an nnssl checkpoint or a file "
                "with the same 'network_weights' + 'nnssl_adaptation_plan' keys (nnssl_export_weights writes one)."
            )
        plan = payload["nnssl_adaptation_plan"]
        if random_init_seed is not None:
            with _seeded(random_init_seed):
                network = build_downstream_network(plan, num_classes=int(plan["pretrain_num_input_channels"]))
        else:
            network = build_downstream_network(plan, num_classes=int(plan["pretrain_num_input_channels"]))
            load_encoder_weights(network, plan, payload["network_weights"])
        return cls.from_network(network, plan, device, precision, window)

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        device: torch.device | str = "cpu",
        precision: str = "auto",
        window: Sequence[int] | None = None,
        random_init_seed: int | None = None,
    ) -> FrozenEncoder:
        """From a checkpoint or export file (``.pth`` or ``.safetensors``); see :meth:`from_weights`."""
        from nnssl.engine.export import load_exported_weights

        payload = load_exported_weights(path)
        encoder = cls.from_weights(payload, device, precision, window, random_init_seed)
        logger.info(
            "Encoder %s from %s%s: window %s, %d maps (channels %s, strides %s).",
            encoder.backbone.arch.name,
            path,
            " (random init)" if random_init_seed is not None else "",
            encoder.window,
            len(encoder.channels),
            encoder.channels,
            encoder.strides,
        )
        return encoder

    def copy_for_window(self, window: Sequence[int]) -> FrozenEncoder:
        """The same weights behind another window (ResEnc only)."""
        network = copy.deepcopy(self.backbone.network)
        return FrozenEncoder.from_network(network, self.adaptation_plan, self.device, self.precision, window)

    # ------------------------------------------------------------------ use
    def autocast(self) -> contextlib.AbstractContextManager:
        if self.precision == "bf16" and self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    @torch.no_grad()
    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Every map of ``encode(x)`` in float32 (x: (B, C, *window) on any device)."""
        with self.autocast():
            maps = self.backbone.encode(x.to(self.device, torch.float32)).maps
        return [m.float() for m in maps]

    @torch.no_grad()
    def pooled(self, maps: Sequence[torch.Tensor]) -> torch.Tensor:
        """(B, sum C): every map's mean, concatenated (:meth:`nnssl.backbones.Features.pooled`)."""
        return torch.cat([m.mean(dim=(2, 3, 4)) for m in maps], dim=1)

    def default_stages(self) -> tuple[int, ...]:
        """The stage of the native dense grid (ResEnc: total stride 8 or the deepest; Primus: the token grid)."""
        target = 8
        for index, stride in enumerate(self.strides):
            if stride >= target:
                return (index,)
        return (len(self.strides) - 1,)


@contextlib.contextmanager
def _seeded(seed: int):
    state = torch.random.get_rng_state()
    torch.manual_seed(int(seed))
    try:
        yield
    finally:
        torch.random.set_rng_state(state)


__all__ = ["FrozenEncoder"]
