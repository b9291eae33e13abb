"""Pre-training methods, one module each, registered in :data:`METHODS` by explicit import."""

from nnssl.methods import mae  # noqa: F401
from nnssl.methods.registry import METHODS

__all__ = ["METHODS"]
