"""Pre-training methods, one module each, registered in :data:`METHODS` by explicit import.

Methods of other installed packages register through the ``nnssl.methods`` entry-point group (:mod:`nnssl.plugins`).
"""

from nnssl.methods import (
    aligned_mae,  # noqa: F401
    dino,  # noqa: F401
    gvsl,  # noqa: F401
    mae,  # noqa: F401
    models_genesis,  # noqa: F401
    pcrlv2,  # noqa: F401
    simclr,  # noqa: F401
    simmim,  # noqa: F401
    spark,  # noqa: F401
    swin_unetr,  # noqa: F401
    voco,  # noqa: F401
    volume_fusion,  # noqa: F401
)
from nnssl.methods.registry import METHODS

__all__ = ["METHODS"]
