"""A small name -> entry registry in timm's style, shared by metrics and re-init strategies.

An entry is any object with a ``name`` attribute (a frozen dataclass such as ``MetricInfo`` or
``StrategyInfo``). Lookups of unknown names fail with close matches, listing is ordered by registration.
"""
from __future__ import annotations

import difflib
import importlib
from typing import Generic, Iterator, TypeVar

from plasticity_core.errors import UnknownNameError

T = TypeVar("T")

# kind -> the module whose import fills that registry (its entries register themselves on import)
PROVIDERS = {"metric": "plasticity_core.metrics", "re-init strategy": "plasticity_core.reinit",
             "executor": "plasticity_core.runs.executors", "tracker sink": "plasticity_core.runs.sinks"}
_REGISTRIES: dict[str, "Registry"] = {}


def registry(kind: str) -> "Registry":
    """The filled registry of ``kind`` (a key of ``PROVIDERS``), loading its provider module on first use.

    Modules below the registries (``config``) check names through this, so they never import what is above them.
    """
    importlib.import_module(PROVIDERS[kind])
    return _REGISTRIES[kind]


class Registry(Generic[T]):
    """Ordered mapping of names to documented entries, with helpful errors for typos."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}
        _REGISTRIES.setdefault(kind, self)

    def add(self, entry: T) -> T:
        name = getattr(entry, "name")
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = entry
        return entry

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            close = difflib.get_close_matches(name, list(self._entries), n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
            raise UnknownNameError(f"unknown {self.kind} {name!r}{hint} (known: {', '.join(self._entries)})") from None

    def names(self) -> list[str]:
        return list(self._entries)

    def __getitem__(self, name: str) -> T:
        return self.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def items(self):
        return self._entries.items()

    def values(self):
        return self._entries.values()

    def __repr__(self) -> str:
        return f"Registry({self.kind}: {', '.join(self._entries)})"
