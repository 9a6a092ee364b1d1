"""Gloo's tag filters: all ANDed; `key` means the tag is present, `kvPair` an exact value.

Tag keys compare without regard to case, values exactly (as in Gloo). Unlike
Gloo, tags whose keys differ only in case do not hide each other: an
instance tagged `Env=a` and `env=b` carries both, so it matches either value.

Pure: instances are anything with a `tags` sequence of (key, value) pairs.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

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
        # By lower-cased key: the positions of the instances that carry it, ascending, and each
        # one's value. Pairs are grouped by value when a filter first names the key (few keys
        # are ever filtered on); postings become sets when a filter first names them.
        keyed: dict[str, tuple[list[int], list[str]]] = {}
        get = keyed.get
        for position, instance in enumerate(self.instances):
            for key, value in instance.tags:
                low = key.lower()
                found = get(low)
                if found is None:
                    keyed[low] = ([position], [value])
                else:
                    found[0].append(position)
                    found[1].append(value)
        self._keyed = keyed
        self._by_value: dict[str, dict[str, list[int]]] = {}
        self._sets: dict[str | tuple[str, str], set[int]] = {}
        # What callers derive once per instance of this listing and share between upstreams
        # (see endpoints.reconcile_one): the index lives exactly as long as the listing.
        self.memo: dict[str, Any] = {}

    def _listed(self, term: str | tuple[str, str]) -> list[int]:
        """The positions of a key or (key, value) pair, ascending, once per tag that has it."""
        if isinstance(term, str):
            return self._keyed.get(term, ([], []))[0]
        key, value = term
        groups = self._by_value.get(key)
        if groups is None:
            groups = self._by_value[key] = {}
            for position, tag_value in zip(*self._keyed.get(key, ([], [])), strict=True):
                found = groups.get(tag_value)
                if found is None:
                    groups[tag_value] = [position]
                else:
                    found.append(position)
        return groups.get(value, [])

    def _posting(self, term: str | tuple[str, str]) -> set[int]:
        posting = self._sets.get(term)
        if posting is None:
            posting = self._sets[term] = set(self._listed(term))
        return posting

    def _ascending(self, term: str | tuple[str, str]) -> list[int]:
        """The term's positions, ascending, each once (an instance tagged `Env` and `env` is listed twice)."""
        listed = self._listed(term)
        unique = self._posting(term)
        return listed if len(listed) == len(unique) else sorted(unique)

    def positions(self, matcher: Matcher) -> list[int]:
        """The positions in `instances` of those that satisfy `matcher`, ascending (listing order)."""
        if not matcher.keys and not matcher.pairs:
            return list(range(len(self.instances)))
        terms: list[str | tuple[str, str]] = [*matcher.keys, *matcher.pairs]
        terms.sort(key=lambda term: len(self._posting(term)))
        # The smallest posting, in order, filtered by membership in the others: no sort.
        found: Iterable[int] = self._ascending(terms[0])
        for term in terms[1:]:
            found = filter(self._posting(term).__contains__, found)
        return list(found)

    def select(self, matcher: Matcher) -> list[T]:
        """The instances that satisfy `matcher`, in listing order."""
        instances = self.instances
        return [instances[position] for position in self.positions(matcher)]
