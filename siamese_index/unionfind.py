"""Disjoint sets with path compression: which items are linked, directly or through others."""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from typing import Any, Generic, Protocol, TypeVar


class Orderable(Hashable, Protocol):
    """What a member must be: hashable (a dict key) and ordered (sets are named by their smallest)."""

    def __lt__(self, other: Any, /) -> bool: ...


T = TypeVar("T", bound=Orderable)


class UnionFind(Generic[T]):
    """Items join sets by `union`; `find` names a set by its smallest member (stable across runs)."""

    def __init__(self, items: Iterable[T] = ()) -> None:
        self.parent: dict[T, T] = {x: x for x in items}

    def find(self, x: T) -> T:
        parent = self.parent
        parent.setdefault(x, x)
        root = x
        while parent[root] != root:
            root = parent[root]
        while parent[x] != root:  # compress the path walked
            parent[x], x = root, parent[x]
        return root

    def union(self, a: T, b: T) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            lo, hi = (ra, rb) if ra < rb else (rb, ra)
            self.parent[hi] = lo

    def groups(self) -> list[list[T]]:
        """Every set with its members in sorted order, sets ordered by their smallest member."""
        out: dict[T, list[T]] = {}
        for x in self.parent:
            out.setdefault(self.find(x), []).append(x)
        return sorted((sorted(g) for g in out.values()), key=lambda g: g[0])
