"""The method registry: ``METHODS.get("MAE")`` returns the method class (a :class:`SSLMethod` subclass).

Methods register themselves with ``@METHODS.register("Name")``; ``nnssl.methods`` imports every method
module explicitly, so importing ``nnssl.methods`` fills the registry.
"""

from __future__ import annotations

from nnssl.methods.base import SSLMethod
from nnssl.registry import Registry


def _load_plugins() -> None:
    from nnssl.plugins import load_method_plugins

    load_method_plugins()


#: Builtin methods register when :mod:`nnssl.methods` is imported; plugins (``nnssl.methods`` entry points,
#: :mod:`nnssl.plugins`) on the first lookup.
METHODS: Registry[type[SSLMethod]] = Registry("method", loader=_load_plugins)
