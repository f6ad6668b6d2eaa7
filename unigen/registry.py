"""A named registry: the one lookup behind model kinds, tasks and pretrained-weight loaders."""

from __future__ import annotations

from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Name -> entry, with an error that lists what is registered and how to add more."""

    def __init__(self, what: str):
        self.what = what
        self._entries: dict[str, T] = {}

    def add(self, name: str, entry: T) -> T:
        """Add (or replace) `name`; returns the entry."""
        self._entries[name] = entry
        return entry

    def get(self, name: str) -> T:
        if name not in self._entries:
            raise ValueError(f"unknown {self.what} {name!r}; registered: {sorted(self._entries)} (a {self.what} "
                             f"defined outside unigen must be registered first, e.g. by a module named in "
                             f"config.imports)")
        return self._entries[name]

    def find(self, name: str) -> T | None:
        return self._entries.get(name)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def values(self) -> list[T]:
        return list(self._entries.values())
