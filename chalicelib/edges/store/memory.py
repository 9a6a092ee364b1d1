"""The in-memory twin of the DynamoDB store, for the pure tests and benchmarks."""

from __future__ import annotations

import copy
import json
import threading
import uuid
from collections.abc import Iterable
from typing import Any

from chalicelib.domain.accounts import Account
from chalicelib.domain.endpoints import EndpointSet
from chalicelib.domain.spec import Upstream
from chalicelib.domain.status import PENDING, Status, StoredUpstream, stored
from chalicelib.edges.store.base import ANY, Conflict, Guard, Holding, Observations, Outcome
from chalicelib.edges.store.chunks import encode_document


class MemoryStore:
    """The in-memory twin of `DynamoStore`, for the pure tests and benchmarks."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.upstreams: dict[str, dict[str, Any]] = {}
        self.sets: dict[str, EndpointSet] = {}
        self.marks: dict[str, str] = {}
        self.marks_by_kind: dict[str, dict[str, str]] = {}
        self.accounts: dict[str, Account] = {}
        self.logs: dict[str, Observations] = {}
        self.holdings: dict[tuple[str, str], Holding] = {}
        self.writes = 0
        self.reads = 0  # reads of endpoint sets and membership records (what an event costs)

    def put_upstream(self, upstream: Upstream, now: str, expect: str | None = ANY) -> str:
        with self._lock:
            current = self.upstreams.get(upstream.key)
            if expect != ANY and (current.get("generation") if current else None) != expect:
                raise Conflict(upstream.key)
            self.writes += 1
            encode_document(upstream.document)  # the same limit as DynamoDB
            generation = uuid.uuid4().hex
            self.upstreams[upstream.key] = {
                "namespace": upstream.namespace,
                "name": upstream.name,
                "document": json.dumps(upstream.document),
                "status": PENDING.as_dict(),
                "updatedAt": now,
                "generation": generation,
            }
            return generation

    def _load(self, item: dict[str, Any]) -> StoredUpstream:
        return stored(
            item["namespace"],
            item["name"],
            json.loads(item["document"]),
            Status.from_dict(copy.deepcopy(item["status"])),
            item["updatedAt"],
            item.get("generation", ""),
        )

    def get_upstream(self, namespace: str, name: str) -> StoredUpstream | None:
        item = self.upstreams.get(f"{namespace}/{name}")
        return self._load(item) if item else None

    def list_upstreams(self) -> list[StoredUpstream]:
        return [self._load(item) for _, item in sorted(self.upstreams.items())]

    def delete_upstream(self, namespace: str, name: str, expect: str = ANY) -> bool:
        key = f"{namespace}/{name}"
        with self._lock:
            current = self.upstreams.get(key)
            if expect != ANY and (current is None or current["generation"] != expect):
                raise Conflict(key)
            existed = self.upstreams.pop(key, None) is not None
            self.sets.pop(key, None)
            self.writes += 2
        return existed

    def put_status(self, namespace: str, name: str, status: Status, generation: str | None = None) -> None:
        with self._lock:
            item = self.upstreams.get(f"{namespace}/{name}")
            if item is not None and generation in (None, item["generation"]):
                self.writes += 1
                item["status"] = status.as_dict()

    def get_endpoint_set(self, namespace: str, name: str) -> EndpointSet | None:
        self.reads += 1
        return self.sets.get(f"{namespace}/{name}")

    def list_endpoint_sets(self) -> list[EndpointSet]:
        return [self.sets[key] for key in sorted(self.sets)]

    def endpoint_digests(self) -> dict[str, str]:
        return {key: endpoint_set.digest for key, endpoint_set in self.sets.items()}

    def put_endpoint_set(self, endpoint_set: EndpointSet, expected_digest: str | None) -> bool:
        return self.write_set(endpoint_set, expected_digest, Guard()) is Outcome.WRITTEN

    def write_set(self, endpoint_set: EndpointSet, expected_digest: str | None, guard: Guard) -> Outcome:
        with self._lock:
            upstream = self.upstreams.get(endpoint_set.key)
            if guard.generation is not None and (upstream is None or upstream["generation"] != guard.generation):
                return Outcome.UPSTREAM_CHANGED
            if guard.group is not None:
                log = self.logs.get(guard.group, Observations())
                if guard.version is not None and log.version != guard.version:
                    return Outcome.OBSERVED
                if guard.instance is not None and log.seen.get(guard.instance[0]) != guard.instance[1]:
                    return Outcome.OBSERVED
            current = self.sets.get(endpoint_set.key)
            if (current.digest if current else None) != expected_digest:
                return Outcome.SET_CHANGED
            self.writes += 1
            self.sets[endpoint_set.key] = endpoint_set
            return Outcome.WRITTEN

    def delete_endpoint_set(self, namespace: str, name: str) -> None:
        with self._lock:
            self.writes += 1
            self.sets.pop(f"{namespace}/{name}", None)

    def delete_orphan_set(self, namespace: str, name: str) -> bool:
        key = f"{namespace}/{name}"
        with self._lock:
            if key in self.upstreams or key not in self.sets:
                return False
            self.writes += 1
            del self.sets[key]
            return True

    def observe(self, group: str, instance_id: str, at: str) -> bool:
        with self._lock:
            log = self.logs.get(group, Observations())
            if log.seen.get(instance_id, "") >= at:
                return False
            self.writes += 1
            self.logs[group] = Observations(log.version + 1, {**log.seen, instance_id: at})
            return True

    def observations(self, group: str) -> Observations:
        log = self.logs.get(group, Observations())
        return Observations(log.version, dict(log.seen))

    def prune_observations(self, group: str, before: str) -> None:
        with self._lock:
            log = self.logs.get(group)
            if log is None:
                return
            kept = {instance: at for instance, at in log.seen.items() if at >= before}
            if kept != log.seen:
                self.writes += 1
                self.logs[group] = Observations(log.version, kept)

    def holding(self, group: str, instance_id: str) -> Holding | None:
        self.reads += 1
        return self.holdings.get((group, instance_id))

    def hold(
        self, group: str, instance_id: str, keys: Iterable[str], at: str, tags: tuple[tuple[str, str], ...]
    ) -> None:
        with self._lock:
            self.writes += 1
            old = self.holdings.get((group, instance_id))
            if old is None or old.at < at:
                self.holdings[(group, instance_id)] = Holding(frozenset(keys) | (old.keys if old else set()), at, tags)
            else:
                self.holdings[(group, instance_id)] = Holding(old.keys | frozenset(keys), old.at, old.tags)

    def release(self, group: str, instance_id: str, keys: Iterable[str], at: str) -> None:
        with self._lock:
            old = self.holdings.get((group, instance_id))
            gone = frozenset(keys)
            if old is not None and old.at == at and old.keys & gone:
                self.writes += 1
                self.holdings[(group, instance_id)] = Holding(old.keys - gone, old.at, old.tags)

    def get_scan_marks(self) -> dict[str, str]:
        return dict(self.marks)

    def put_scan_marks(self, marks: dict[str, str]) -> None:
        with self._lock:
            self.writes += 1
            self.marks = dict(marks)

    def set_mark(self, kind: str, key: str, value: str) -> None:
        with self._lock:
            self.writes += 1
            self.marks_by_kind.setdefault(kind, {})[key] = value

    def get_marks(self, kind: str) -> dict[str, str]:
        return dict(self.marks_by_kind.get(kind, {}))

    def forget_marks(self, kind: str, keys: Iterable[str]) -> None:
        with self._lock:
            self.writes += 1
            for key in keys:
                self.marks_by_kind.get(kind, {}).pop(key, None)

    def put_account(self, account: Account) -> None:
        with self._lock:
            self.writes += 1
            self.accounts[account.name] = account

    def get_account(self, name: str) -> Account | None:
        return self.accounts.get(name)

    def list_accounts(self) -> list[Account]:
        return [self.accounts[name] for name in sorted(self.accounts)]

    def delete_account(self, name: str) -> bool:
        with self._lock:
            self.writes += 1
            return self.accounts.pop(name, None) is not None
