"""The in-memory twin of the DynamoDB store, for the pure tests and benchmarks."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterable
from typing import Any

from chalicelib.domain.accounts import Account
from chalicelib.domain.endpoints import EndpointSet
from chalicelib.domain.names import upstream_key
from chalicelib.domain.spec import Upstream
from chalicelib.domain.status import PENDING, ParsedDocuments, ScanRecord, Status, StoredUpstream
from chalicelib.edges.store.base import ANY, Conflict, Guard, Holding, Observations, Outcome
from chalicelib.edges.store.chunks import encode_document


class MemoryStore:
    """The in-memory twin of `DynamoStore`, for the pure tests and benchmarks."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.upstreams: dict[str, dict[str, Any]] = {}
        self._documents = ParsedDocuments()
        self.sets: dict[str, EndpointSet] = {}
        self.scan = ScanRecord()
        self.marks_by_kind: dict[str, dict[str, str]] = {}
        self.accounts: dict[str, Account] = {}
        self.logs: dict[str, Observations] = {}
        self.holdings: dict[tuple[str, str], Holding] = {}
        self.writes = 0
        self.reads = 0  # reads of endpoint sets and membership records (what an event costs)

    def put_upstream(self, upstream: Upstream, now: str, expect: str | None = ANY) -> str:
        from chalicelib.domain.models import StatusItem, wire  # as DynamoStore: polls never load the models

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
                "status": wire(StatusItem.of(PENDING)),  # as DynamoDB's item holds it (JSON)
                "updatedAt": now,
                "generation": generation,
            }
            return generation

    def _load(self, item: dict[str, Any]) -> StoredUpstream:
        from chalicelib.domain.models import StatusItem

        return self._documents.stored(
            item["namespace"],
            item["name"],
            item["document"],
            json.loads,
            StatusItem.model_validate(item["status"]).status(),
            item["updatedAt"],
            item.get("generation", ""),
        )

    def get_upstream(self, namespace: str, name: str) -> StoredUpstream | None:
        item = self.upstreams.get(upstream_key(namespace, name))
        return self._load(item) if item else None

    def list_upstreams(self) -> list[StoredUpstream]:
        return [self._load(item) for _, item in sorted(self.upstreams.items())]

    def delete_upstream(self, namespace: str, name: str, expect: str = ANY) -> bool:
        key = upstream_key(namespace, name)
        with self._lock:
            current = self.upstreams.get(key)
            if expect != ANY and (current is None or current["generation"] != expect):
                raise Conflict(key)
            existed = self.upstreams.pop(key, None) is not None
            self.sets.pop(key, None)
            self.writes += 2
        return existed

    def put_status(self, namespace: str, name: str, status: Status, generation: str | None = None) -> None:
        from chalicelib.domain.models import StatusItem, wire

        with self._lock:
            item = self.upstreams.get(upstream_key(namespace, name))
            if item is not None and generation in (None, item["generation"]):
                self.writes += 1
                item["status"] = wire(StatusItem.of(status))

    def get_endpoint_set(self, namespace: str, name: str) -> EndpointSet | None:
        self.reads += 1
        return self.sets.get(f"{namespace}/{name}")

    def endpoint_versions(self, keys: Iterable[str]) -> dict[str, str]:
        """The served version of each set that exists (DynamoDB: the heads alone, one small read each)."""
        sets = self.sets
        return {key: sets[key].version for key in keys if key in sets}

    def list_endpoint_sets(self) -> list[EndpointSet]:
        return [self.sets[key] for key in sorted(self.sets)]

    def set_digests(self, keys: Iterable[str]) -> dict[str, str]:
        return {key: self.sets[key].digest for key in keys if key in self.sets}

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

    def get_scan_record(self) -> ScanRecord:
        with self._lock:
            return ScanRecord(self.scan.planned, dict(self.scan.behind), dict(self.scan.listed))

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
        return self.get_scan_record().as_marks()

    def plan_scan(self, at: str, forget: Iterable[str] = ()) -> None:
        with self._lock:
            self.writes += 1
            gone = set(forget)
            behind = {group: mark for group, mark in self.scan.behind.items() if group not in gone}
            listed = {group: mark for group, mark in self.scan.listed.items() if group not in gone}
            self.scan = ScanRecord(at, behind, listed)

    def fall_behind(self, group: str, last_ok: str) -> None:
        with self._lock:
            self.writes += 1
            behind = {group: last_ok, **self.scan.behind}
            self.scan = ScanRecord(self.scan.planned, behind, self.scan.listed)

    def catch_up(self, group: str) -> None:
        with self._lock:
            self.writes += 1
            behind = {key: mark for key, mark in self.scan.behind.items() if key != group}
            self.scan = ScanRecord(self.scan.planned, behind, self.scan.listed)

    def mark_listed(self, group: str, at: str) -> None:
        with self._lock:
            self.writes += 1
            self.scan = ScanRecord(self.scan.planned, self.scan.behind, {**self.scan.listed, group: at})

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
