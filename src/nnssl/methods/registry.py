"""The method registry: ``METHODS.get("MAE")`` returns the method class (a :class:`SSLMethod` subclass).

Methods register themselves with ``@METHODS.register("Name")``; ``nnssl.methods`` imports every method
module explicitly, so importing ``nnssl.methods`` fills the registry.
"""

from __future__ import annotations

from nnssl.methods.base import SSLMethod
from nnssl.registry import Registry

METHODS: Registry[type[SSLMethod]] = Registry("method")
