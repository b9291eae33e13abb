"""A small generic registry: register by name, look up with close-match suggestions, list."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Named entries of one kind (methods, architectures, presets, readers, normalizers).

    >>> READERS = Registry("image reader")
    >>> @READERS.register("sitk")
    ... def read(path): ...

    ``loader`` (optional) fills the registry on the first lookup (``get``, ``names``, ``in``, iteration, ``len``),
    so that importing the module that holds the registry stays cheap (presets need every method imported);
    ``add`` never triggers it, so the loader itself can add entries.
    """

    def __init__(self, kind: str, loader: Callable[[], None] | None = None) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._loader = loader

    def _load(self) -> None:
        if self._loader is not None:
            loader, self._loader = self._loader, None
            loader()

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator that adds its target under ``name``; a duplicate name is an error."""

        def add(entry: T) -> T:
            self.add(name, entry)
            return entry

        return add

    def add(self, name: str, entry: T) -> None:
        """Add ``entry`` under ``name``; a duplicate name is an error."""
        if name in self._entries:
            raise KeyError(f"A {self.kind} named '{name}' is already registered.")
        self._entries[name] = entry

    def get(self, name: str) -> T:
        """The entry named ``name``; an unknown name raises KeyError with the closest names."""
        self._load()
        try:
            return self._entries[name]
        except KeyError:
            close = difflib.get_close_matches(name, self._entries, n=5, cutoff=0.5)
            hint = f" Did you mean: {', '.join(close)}?" if close else ""
            raise KeyError(
                f"Unknown {self.kind} '{name}'.{hint} Known: {len(self._entries)} (list them with names())."
            ) from None

    def names(self) -> list[str]:
        """Registered names, sorted."""
        self._load()
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        self._load()
        return len(self._entries)
