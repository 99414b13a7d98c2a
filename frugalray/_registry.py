"""Name -> object registries with did-you-mean errors (tasks, strategies, models, metrics)."""

from __future__ import annotations

import difflib
from typing import Callable, Generic, Iterator, TypeVar

T = TypeVar("T")


class FrugalrayError(ValueError):
    """Bad input: the message names the input, the place and what would be valid."""


def did_you_mean(kind: str, name: str, available: list[str]) -> str:
    """Build the standard unknown-name message.

    >>> did_you_mean("task", "wikiner_ner", ["wikiner", "ftb_pos"])
    "Unknown task 'wikiner_ner'. Did you mean 'wikiner'? Available: ftb_pos, wikiner"
    """
    close = difflib.get_close_matches(name, available, n=1, cutoff=0.5)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return f"Unknown {kind} '{name}'.{hint} Available: {', '.join(sorted(available))}"


class Registry(Generic[T]):
    """A dict filled by a decorator; duplicate and unknown names are errors."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorate(obj: T) -> T:
            self.add(name, obj)
            return obj

        return decorate

    def add(self, name: str, obj: T) -> None:
        if name in self._items:
            raise FrugalrayError(f"{self.kind} '{name}' is already registered")
        self._items[name] = obj

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise FrugalrayError(did_you_mean(self.kind, name, list(self._items))) from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def entries(self) -> list[T]:
        """Every registered object, in the order they were registered."""
        return list(self._items.values())

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
