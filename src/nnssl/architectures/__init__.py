"""Architecture registry: the networks pre-training builds and nnU-Net fine-tunes.

``ARCHITECTURES`` maps a name to an :class:`~nnssl.architectures.spec.ArchitectureSpec`:

* ``ResEncL`` - dna ``ResidualEncoderUNet`` exactly as nnU-Net's ResEnc-L preset (see ``resenc.py``);
* ``PrimusS``, ``PrimusB``, ``PrimusM``, ``PrimusL`` - dna Primus presets (see ``primus.py``);
* ``ResEncTiny``, ``PrimusTiny`` - small CPU variants rebuilt dynamically downstream.

:func:`build_network` builds the pre-training network after checking the patch size.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from nnssl.architectures.primus import PRIMUS_SPECS
from nnssl.architectures.resenc import RESENC_SPECS
from nnssl.architectures.spec import ArchitectureSpec
from nnssl.registry import Registry

ARCHITECTURES: Registry[ArchitectureSpec] = Registry("architecture")
for _spec in (*RESENC_SPECS, *PRIMUS_SPECS):
    ARCHITECTURES.add(_spec.name, _spec)


def check_patch_size(spec: ArchitectureSpec, patch_size: Sequence[int]) -> tuple[int, int, int]:
    """``patch_size`` as a 3-tuple of ints; raises ValueError unless every side is a multiple of the spec's."""
    sizes = tuple(int(p) for p in patch_size)
    if len(sizes) != 3 or any(p <= 0 or p % spec.patch_multiple for p in sizes):
        raise ValueError(
            f"Architecture '{spec.name}' needs a 3D patch size whose sides are positive multiples of "
            f"{spec.patch_multiple}; got {list(patch_size)}. Set train.patch_size accordingly (e.g. 160,160,160)."
        )
    return sizes  # type: ignore[return-value]


def build_network(name: str, in_channels: int, out_channels: int, patch_size: Sequence[int]) -> nn.Module:
    """Build the pre-training network registered as ``name`` for ``patch_size`` (X, Y, Z)."""
    spec = ARCHITECTURES.get(name)
    return spec.build(int(in_channels), int(out_channels), check_patch_size(spec, patch_size))


__all__ = ["ARCHITECTURES", "ArchitectureSpec", "build_network", "check_patch_size"]
