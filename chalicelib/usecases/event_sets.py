"""Which endpoint sets one instance's event can change, without reading every set of its group.

A set can hold an instance only if a scan or an event put it there. An event records which
sets it left the instance in (the membership record, `Holding`); a scan puts an instance in
exactly the sets whose filters its tags satisfy at the listing. So the sets to read are:

- the record's keys (every set an event put the instance in, not yet taken out again);
- the sets whose filters the recorded tags, or the tags EC2 gives now, satisfy;
- the sets whose filters name a tag key that changed (the event's `changed-tag-keys`, or a key
  whose value differs between the record and now) and whose other filters hold: the sets the
  instance could have been listed into while that key had another value.

Without a record (an instance only scans have seen) every set of the group is read, once.
A record that disagrees with a set (the set holds the instance with tags neither recorded nor
current) is stale: every set of the group is read too. `UpstreamIndex` finds the filters an
instance's tags can satisfy by tag, so an event tests a few filter lists, not every upstream's.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence

from chalicelib.domain.endpoints import Endpoint, EndpointSet
from chalicelib.domain.filters import Matcher
from chalicelib.domain.status import StoredUpstream
from chalicelib.edges.store import Holding, Store

Tags = Sequence[tuple[str, str]]


def _lowered(tags: Tags) -> set[tuple[str, str]]:
    return {(key.lower(), value) for key, value in tags}


class UpstreamIndex:
    """One group's upstreams by the tags their filters name."""

    def __init__(self, members: Iterable[StoredUpstream]) -> None:
        self.matchers: dict[str, Matcher] = {}
        self._by_pair: dict[tuple[str, str], list[str]] = defaultdict(list)  # filed under one required pair
        self._by_key: dict[str, list[str]] = defaultdict(list)  # filters of keys alone: under one key
        self._naming: dict[str, list[str]] = defaultdict(list)  # every key a filter list names
        self._everything: list[str] = []  # no filter: every instance of the group
        for entry in members:
            if entry.upstream is not None:
                self._file(entry.key, Matcher.compile(entry.upstream.ec2.filters))
        self.keys = frozenset(self.matchers)

    def _file(self, key: str, matcher: Matcher) -> None:
        self.matchers[key] = matcher
        for name in matcher.keys | {name for name, _ in matcher.pairs}:
            self._naming[name].append(key)
        if matcher.pairs:
            self._by_pair[min(matcher.pairs)].append(key)
        elif matcher.keys:
            self._by_key[min(matcher.keys)].append(key)
        else:
            self._everything.append(key)

    def matching(self, tags: Tags) -> set[str]:
        """The upstreams whose filters these tags satisfy."""
        lowered = _lowered(tags)
        filed = [key for pair in lowered for key in self._by_pair.get(pair, ())]
        filed += [key for name in {name for name, _ in lowered} for key in self._by_key.get(name, ())]
        return set(self._everything) | {key for key in filed if self.matchers[key].matches(tags)}

    def touching(self, names: frozenset[str], tags: Tags) -> set[str]:
        """The upstreams whose filters name one of `names` and whose other filters `tags` satisfy."""
        lowered = _lowered(tags)
        present = {name for name, _ in lowered}
        found = set()
        for key in {key for name in names for key in self._naming.get(name, ())}:
            matcher = self.matchers[key]
            keys_hold = {name for name in matcher.keys if name not in names} <= present
            if keys_hold and {pair for pair in matcher.pairs if pair[0] not in names} <= lowered:
                found.add(key)
        return found


def changed_keys(before: Tags, after: Tags) -> frozenset[str]:
    """The tag keys (lowered) whose values differ between two tag lists."""
    return frozenset(name for name, _ in _lowered(before) ^ _lowered(after))


def candidates(
    index: UpstreamIndex, record: Holding | None, tags: Tags | None, changed: frozenset[str]
) -> frozenset[str]:
    """The sets an event about this instance must read (see the module's docstring). `tags`: what EC2
    says now, None when not known yet or when the instance is gone."""
    if record is None:
        return index.keys
    found = set(record.keys) | index.matching(record.tags) | index.touching(changed, record.tags)
    if tags is not None:
        moved = changed | changed_keys(record.tags, tags)
        found |= index.matching(tags) | index.touching(moved, tags)
    return frozenset(found) & index.keys


def mismatched(sets: Iterable[EndpointSet | None], instance_id: str, known: set[tuple[tuple[str, str], ...]]) -> bool:
    """Whether a set holds the instance with tags other than the known ones: a listing saw tags
    no event recorded, so the record cannot tell where else the instance is."""
    return any(
        endpoint.instance_id == instance_id and endpoint.tags not in known
        for endpoint_set in sets
        if endpoint_set is not None
        for endpoint in endpoint_set.endpoints
    )


class SetCache:
    """A group's sets as this handler read them (before its observation) and then wrote them."""

    def __init__(self, store: Store, members: dict[str, StoredUpstream]) -> None:
        self._store = store
        self._members = members
        self.sets: dict[str, EndpointSet | None] = {}
        self._by_id: dict[str, dict[str, Endpoint]] = {}
        self.reads = 0

    def read(self, keys: Iterable[str]) -> None:
        for key in sorted(set(keys) - set(self.sets)):
            entry = self._members[key]
            self.sets[key] = self._store.get_endpoint_set(entry.namespace, entry.name)
            self.reads += 1

    def forget(self, keys: Iterable[str]) -> None:
        for key in keys:
            self.sets.pop(key, None)
            self._by_id.pop(key, None)

    def put(self, key: str, endpoint_set: EndpointSet) -> None:
        """A set this handler wrote."""
        self.sets[key] = endpoint_set
        self._by_id.pop(key, None)

    def endpoint(self, key: str, instance_id: str) -> Endpoint | None:
        """The instance's endpoint in the set as read or written (indexed once per set)."""
        if key not in self._by_id:
            found = self.sets.get(key)
            self._by_id[key] = {e.instance_id: e for e in (found.endpoints if found else ())}
        return self._by_id[key].get(instance_id)

    def missing(self, keys: Iterable[str]) -> frozenset[str]:
        return frozenset(keys) - set(self.sets)

    def of(self, keys: Iterable[str]) -> list[EndpointSet | None]:
        return [self.sets.get(key) for key in sorted(keys)]
