"""Methods from other installed packages: the ``nnssl.methods`` entry-point group.

A package that adds a method declares, in its ``pyproject.toml``::

    [project.entry-points."nnssl.methods"]
    my_method = "my_package.nnssl_plugin:register"

``register`` (any callable taking no argument; or a module, whose import does the registering) adds the method
class to :data:`nnssl.methods.METHODS` (``METHODS.add("MyMethod", MyMethod)``) and its presets with
:func:`nnssl.presets.add_preset`. nnssl calls every entry point once, after its own methods and presets are
registered (at the end of :mod:`nnssl.presets`), so a plugin may use builtin presets as bases. A plugin that fails
to load is reported with a warning naming the entry point and the error; nnssl's own methods keep working.
See ``documentation/adding_a_method.md``.
"""

from __future__ import annotations

import logging
from importlib.metadata import entry_points

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "nnssl.methods"
_loaded: dict[str, str] = {}


def load_method_plugins() -> dict[str, str]:
    """Load every ``nnssl.methods`` entry point once; returns ``{name: "ok" | error message}`` of all loaded so far."""
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        key = f"{entry.name} = {entry.value}"
        if key in _loaded:
            continue
        try:
            target = entry.load()
            if callable(target):
                target()
            _loaded[key] = "ok"
            logger.debug("Loaded nnssl method plugin %s.", key)
        except Exception as err:  # noqa: BLE001 - one broken plugin must not break nnssl
            _loaded[key] = f"{type(err).__name__}: {err}"
            logger.warning("The nnssl method plugin '%s' failed to load (%s); it is skipped.", key, _loaded[key])
    return dict(_loaded)
