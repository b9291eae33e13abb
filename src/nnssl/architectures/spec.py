"""What an architecture entry knows: how to build it and which weights transfer downstream."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

Builder = Callable[[int, int, tuple[int, int, int]], nn.Module]


@dataclass(frozen=True)
class ArchitectureSpec:
    """An architecture as the engine and the adaptation plan see it.

    ``build(in_channels, out_channels, patch_size)`` returns the full pre-training network (encoder and
    decoder, as nnU-Net's downstream network of the same name). The keys are module paths inside that
    network's ``state_dict`` that nnU-Net's ``PretrainedTrainer`` transfers: ``key_to_encoder`` and
    ``key_to_stem`` are loaded strictly, ``keys_to_in_proj`` are the first convolutions (repeated over
    input channels downstream), ``key_to_lpe`` the learned positional embedding (interpolated downstream).

    ``arch_class_name`` is the name nnU-Net rebuilds from (``ResEncL``, ``PrimusM``, or a dynamic class
    with ``arch_kwargs``). ``family`` names the backbone interface methods see (``"cnn"``: encoder-decoder
    U-Net, masks voxel blocks; ``"transformer"``: token encoder, drops or replaces tokens; see
    :mod:`nnssl.backbones`); ``token_size`` is the patch-embedding side of transformers. ``patch_multiple`` is the
    factor every patch side must be divisible by.
    """

    name: str
    build: Builder
    arch_class_name: str
    key_to_encoder: str
    key_to_stem: str
    keys_to_in_proj: tuple[str, ...]
    key_to_lpe: str | None = None
    family: str = "cnn"
    token_size: int | None = None
    patch_multiple: int = 32
    arch_kwargs: dict | None = None
    arch_kwargs_requiring_import: tuple[str, ...] = ()
    downstream_patch_size: tuple[int, int, int] = (160, 160, 160)
    tiny: bool = False
