"""Gloo's tag filters: all ANDed; `key` means the tag is present, `kvPair` an exact value.

Tag keys compare without regard to case, values exactly (as in Gloo). Unlike
Gloo, tags whose keys differ only in case do not hide each other: an
instance tagged `Env=a` and `env=b` carries both, so it matches either value.

Pure: instances are anything with a `tags` sequence of (key, value) pairs.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from chalicelib.domain.spec import TagFilter


class Tagged(Protocol):
    @property
    def tags(self) -> Sequence[tuple[str, str]]: ...


T = TypeVar("T", bound=Tagged)


@dataclass(frozen=True, slots=True)
class Matcher:
    """A compiled filter list: the keys that must be present and the pairs that must hold."""

    keys: frozenset[str]
    pairs: frozenset[tuple[str, str]]

    @classmethod
    def compile(cls, filters: Iterable[TagFilter]) -> Matcher:
        keys: set[str] = set()
        pairs: set[tuple[str, str]] = set()
        for tag_filter in filters:
            if tag_filter.kvPair is not None:
                pairs.add((tag_filter.kvPair.key.lower(), tag_filter.kvPair.value))
            elif tag_filter.key is not None:
                keys.add(tag_filter.key.lower())
        # A pair implies its key, so a key filter that a pair already covers adds nothing.
        return cls(frozenset(keys - {key for key, _ in pairs}), frozenset(pairs))

    def matches(self, tags: Sequence[tuple[str, str]]) -> bool:
        """Whether one instance's tags satisfy every filter."""
        have_pairs = {(key.lower(), value) for key, value in tags}
        have_keys = {key for key, _ in have_pairs}
        return self.keys <= have_keys and self.pairs <= have_pairs


class TagIndex(Generic[T]):
    """An inverted index over one listing, so each upstream costs its filters' postings.

    Matching U upstreams against N instances one by one costs U x N; with the
    index an upstream costs the size of the smallest posting its filters name.
    """

    def __init__(self, instances: Sequence[T]) -> None:
        self.instances = list(instances)
        self._by_key: dict[str, set[int]] = {}
        self._by_pair: dict[tuple[str, str], set[int]] = {}
        for position, instance in enumerate(self.instances):
            for key, value in instance.tags:
                low = key.lower()
                self._by_key.setdefault(low, set()).add(position)
                self._by_pair.setdefault((low, value), set()).add(position)

    def select(self, matcher: Matcher) -> list[T]:
        """The instances that satisfy `matcher`, in listing order."""
        if not matcher.keys and not matcher.pairs:
            return list(self.instances)
        postings = [self._by_key.get(key, set()) for key in matcher.keys]
        postings += [self._by_pair.get(pair, set()) for pair in matcher.pairs]
        postings.sort(key=len)
        chosen = set(postings[0]).intersection(*postings[1:])
        return [self.instances[position] for position in sorted(chosen)]
