"""The subscription index: which subscribers a channel name reaches.

Exact names live in a dict; wildcard patterns in a tree of levels, where a
``+`` level is a child like any other and a ``#`` level is a set on the node
it follows. :meth:`Subscriptions.match` walks the tree once per publish, so its
cost grows with the depth of the name and the number of ``+`` branches, not
with the number of patterns.

A node's dict and sets exist only once used (a deep pattern's inner nodes hold one
child each and nothing else): a 16-level pattern costs about 4 KiB instead of 11
(issue 12: 20 sessions x 256 such subscriptions < 32 MiB); the broker bounds the
levels of a pattern with ``channels.max_pattern_levels``.
"""

from __future__ import annotations

from typing import Generic, TypeVar

from sessiond_client.topics import ANY_LEVELS, ONE_LEVEL, SEPARATOR, is_pattern

T = TypeVar("T")


class _Node(Generic[T]):
    __slots__ = ("any_levels", "children", "here")

    def __init__(self) -> None:
        self.children: dict[str, _Node[T]] | None = None
        self.here: set[T] | None = None  # patterns ending at this node
        self.any_levels: set[T] | None = None  # patterns ending with "#" after this node

    @property
    def empty(self) -> bool:
        return not (self.children or self.here or self.any_levels)

    def child(self, level: str) -> _Node[T]:
        """The child for *level*, made if missing."""
        children = self.children
        if children is None:
            children = self.children = {}
        node = children.get(level)
        if node is None:
            node = children[level] = _Node()
        return node


class Subscriptions(Generic[T]):
    """Subscribers by pattern; a subscriber appears once per pattern it holds."""

    def __init__(self) -> None:
        self._exact: dict[str, set[T]] = {}
        self._root: _Node[T] = _Node()
        self._wildcards = 0

    def add(self, pattern: str, subscriber: T) -> None:
        if not is_pattern(pattern):
            self._exact.setdefault(pattern, set()).add(subscriber)
            return
        node = self._root
        levels = pattern.split(SEPARATOR)
        for level in levels[:-1]:
            node = node.child(level)
        last = levels[-1]
        if last == ANY_LEVELS:
            if node.any_levels is None:
                node.any_levels = set()
            node.any_levels.add(subscriber)
        else:
            node = node.child(last)
            if node.here is None:
                node.here = set()
            node.here.add(subscriber)
        self._wildcards += 1

    def remove(self, pattern: str, subscriber: T) -> None:
        if not is_pattern(pattern):
            subscribers = self._exact.get(pattern)
            if subscribers is not None:
                subscribers.discard(subscriber)
                if not subscribers:
                    del self._exact[pattern]
            return
        levels = pattern.split(SEPARATOR)
        path = [self._root]
        for level in levels[:-1] if levels[-1] == ANY_LEVELS else levels:
            children = path[-1].children
            child = children.get(level) if children is not None else None
            if child is None:
                return
            path.append(child)
        target = path[-1].any_levels if levels[-1] == ANY_LEVELS else path[-1].here
        if target is None or subscriber not in target:
            return
        target.discard(subscriber)
        self._wildcards -= 1
        keys = levels[:-1] if levels[-1] == ANY_LEVELS else levels
        for depth in range(len(path) - 1, 0, -1):  # prune the branch it leaves empty
            if not path[depth].empty:
                break
            parent = path[depth - 1].children
            assert parent is not None
            del parent[keys[depth - 1]]

    def match(self, name: str) -> set[T]:
        """Every subscriber with a pattern matching *name*, each once."""
        exact = self._exact.get(name)
        if not self._wildcards:
            return set(exact) if exact else set()
        found: set[T] = set(exact) if exact else set()
        self._collect(self._root, name.split(SEPARATOR), 0, found)
        return found

    def _collect(self, node: _Node[T], levels: list[str], index: int, found: set[T]) -> None:
        if node.any_levels:
            found.update(node.any_levels)  # "#" matches the rest, none included
        if index == len(levels):
            if node.here:
                found.update(node.here)
            return
        children = node.children
        if not children:
            return
        child = children.get(levels[index])
        if child is not None:
            self._collect(child, levels, index + 1, found)
        child = children.get(ONE_LEVEL)
        if child is not None:
            self._collect(child, levels, index + 1, found)

    def exact(self, name: str) -> set[T]:
        """The subscribers holding exactly *name* (a view; do not modify)."""
        return self._exact.get(name) or set()

    def __len__(self) -> int:
        return self._wildcards + sum(len(s) for s in self._exact.values())
