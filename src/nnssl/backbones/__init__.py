"""Backbone interfaces per architecture family; methods build theirs with :func:`build_backbone`.

See :mod:`nnssl.backbones.base` for the interface. The family of an architecture is its registry entry's
``family`` (``"cnn"``: :class:`~nnssl.backbones.cnn.CNNBackbone`; ``"transformer"``:
:class:`~nnssl.backbones.transformer.TransformerBackbone`).
"""

from __future__ import annotations

from collections.abc import Sequence

from nnssl.architectures import check_patch_size
from nnssl.architectures.spec import ArchitectureSpec
from nnssl.backbones.base import Backbone, Features, Reconstruction
from nnssl.backbones.cnn import CNNBackbone
from nnssl.backbones.transformer import TransformerBackbone
from nnssl.registry import Registry

FAMILIES: Registry[type[Backbone]] = Registry("backbone family")
FAMILIES.add("cnn", CNNBackbone)
FAMILIES.add("transformer", TransformerBackbone)


def family_of(arch: ArchitectureSpec) -> type[Backbone]:
    """The backbone interface class of ``arch``'s family (class-level facts, no network built)."""
    return FAMILIES.get(arch.family)


def build_backbone(
    arch: ArchitectureSpec,
    in_channels: int,
    input_size: Sequence[int],
    reconstruction: bool = False,
    decoder_depth: int = 2,
    mask_token_std: float = 1e-6,
    out_channels: int | None = None,
    mask_token: bool = True,
) -> Backbone:
    """The backbone interface of ``arch``'s family around a network built for ``input_size`` (checked).

    ``reconstruction=True`` prepares :meth:`Backbone.reconstruct` (trainable decoder; on transformers also the
    mask token, initialised with ``mask_token_std``, and a light Eva decoder of ``decoder_depth`` blocks, none
    with 0). ``out_channels``: channels of the network's output head (default ``in_channels``; e.g. class logits
    of a dense pretext task). ``mask_token=False``: on transformers no mask token is made, for methods that only
    call ``reconstruct(x)`` on the whole input (an unused parameter would get no gradient).
    """
    size = check_patch_size(arch, input_size)
    return FAMILIES.get(arch.family)(
        arch,
        in_channels,
        size,
        reconstruction,
        decoder_depth,
        mask_token_std,
        out_channels=out_channels,
        mask_token=mask_token,
    )


__all__ = ["FAMILIES", "Backbone", "Features", "Reconstruction", "build_backbone", "family_of"]
