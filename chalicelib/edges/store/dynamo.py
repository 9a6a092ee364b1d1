"""The store over two DynamoDB tables, through the low-level client: one class per kind of data.

A set's records are compressed into `body`. Past CHUNK_BYTES (DynamoDB items hold 400 KB at
most) the rest goes into chunk items `{id}#{write}#{n}` (`write` unique to each write), written
before the head item that names them, so a reader never sees a set whose chunks are missing;
the previous set's chunks are deleted after the switch.

Upstream, status and account items are read and written through their models
(`chalicelib.domain.models`), imported where used: polls read only endpoint sets,
so serving them never loads the models.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable
from typing import Any

from botocore.exceptions import ClientError

from chalicelib.domain.accounts import Account
from chalicelib.domain.endpoints import EndpointSet
from chalicelib.domain.names import upstream_key
from chalicelib.domain.spec import Upstream
from chalicelib.domain.status import PENDING, ParsedDocuments, ScanRecord, Status, StoredUpstream
from chalicelib.edges.store.base import (
    ACCOUNT_PREFIX,
    ANY,
    MEMBERSHIP_PREFIX,
    OBSERVATIONS_PREFIX,
    SCAN_MARKS_ID,
    SEEN_PREFIX,
    Conflict,
    Guard,
    Holding,
    Observations,
    Outcome,
)
from chalicelib.edges.store.chunks import (
    CHUNK_READ_ATTEMPTS,
    decode_document,
    decode_endpoints,
    encode_document,
    encode_endpoints,
    head_parts,
)
from chalicelib.edges.store.items import from_item, item_key, to_item, values


def _conditional_failed(err: ClientError) -> bool:
    return err.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException"


def head_attributes(endpoint_set: EndpointSet) -> dict[str, Any]:
    """What a set's head says of it, whatever the layout of its records (every writer of a head uses this)."""
    return {
        "id": {"S": endpoint_set.key},
        "namespace": {"S": endpoint_set.namespace},
        "name": {"S": endpoint_set.name},
        "region": {"S": endpoint_set.region},
        "version": {"S": endpoint_set.version},
        "digest": {"S": endpoint_set.digest},
        "count": {"N": str(len(endpoint_set.endpoints))},
    }


class DynamoStore:
    """`Store` over two DynamoDB tables, through the low-level client."""

    def __init__(self, client: Any, upstreams_table: str, endpoints_table: str) -> None:
        self._db = client
        self.upstreams_table = upstreams_table
        self.endpoints_table = endpoints_table
        self._documents = ParsedDocuments()
        self._heads: dict[str, dict[str, Any]] = {}  # by set key: the head of the last read of the set

    # -- upstreams -------------------------------------------------------------

    def put_upstream(self, upstream: Upstream, now: str, expect: str | None = ANY) -> str:
        from chalicelib.domain.models import StatusItem, UpstreamItem

        item = UpstreamItem(
            id=upstream.key,
            namespace=upstream.namespace,
            name=upstream.name,
            document=encode_document(upstream.document),
            status=StatusItem.of(PENDING),
            updated_at=now,
            generation=uuid.uuid4().hex,
        )
        condition: dict[str, Any] = {}
        if expect is None:
            condition = {"ConditionExpression": "attribute_not_exists(id)"}
        elif expect != ANY:
            condition = self._generation_condition(expect)
        try:
            self._db.put_item(TableName=self.upstreams_table, Item=to_item(item.model_dump(by_alias=True)), **condition)
        except ClientError as err:
            if _conditional_failed(err):
                raise Conflict(upstream.key) from None
            raise
        return item.generation

    def _load(self, attributes: dict[str, Any]) -> StoredUpstream:
        """An upstream's item, as this version and every previous one wrote it (see `UpstreamItem`)."""
        from chalicelib.domain.models import UpstreamItem

        item = UpstreamItem.model_validate(from_item(attributes))
        return self._documents.stored(
            item.namespace,
            item.name,
            item.document,
            decode_document,
            item.stored_status(),
            item.updated_at,
            item.generation,
        )

    def get_upstream(self, namespace: str, name: str) -> StoredUpstream | None:
        answer = self._db.get_item(
            TableName=self.upstreams_table, Key=item_key(upstream_key(namespace, name)), ConsistentRead=True
        )
        return self._load(answer["Item"]) if "Item" in answer else None

    def list_upstreams(self) -> list[StoredUpstream]:
        items = self._scan(self.upstreams_table, ConsistentRead=True)
        return sorted(
            (self._load(item) for item in items if not item["id"]["S"].startswith("~")),
            key=lambda entry: entry.key,
        )

    @staticmethod
    def _generation_condition(generation: str) -> dict[str, Any]:
        """The item still has this generation (items older than generations: this updatedAt)."""
        return {
            "ConditionExpression": "generation = :g OR (attribute_not_exists(generation) AND updatedAt = :g)",
            "ExpressionAttributeValues": values(g=generation),
        }

    def delete_upstream(self, namespace: str, name: str, expect: str = ANY) -> bool:
        condition = self._generation_condition(expect) if expect != ANY else {}
        try:
            answer = self._db.delete_item(
                TableName=self.upstreams_table,
                Key=item_key(upstream_key(namespace, name)),
                ReturnValues="ALL_OLD",
                **condition,
            )
        except ClientError as err:
            if _conditional_failed(err):
                raise Conflict(upstream_key(namespace, name)) from None
            raise
        self.delete_endpoint_set(namespace, name)
        return "Attributes" in answer

    def put_status(self, namespace: str, name: str, status: Status, generation: str | None = None) -> None:
        from chalicelib.domain.models import StatusItem

        condition = "attribute_exists(id)"
        named = {"s": StatusItem.of(status).stored()}
        if generation is not None:  # a status derived from one generation never lands on another
            condition += " AND (generation = :g OR (attribute_not_exists(generation) AND updatedAt = :g))"
            named["g"] = generation
        try:
            self._db.update_item(
                TableName=self.upstreams_table,
                Key=item_key(upstream_key(namespace, name)),
                UpdateExpression="SET #s = :s",
                ConditionExpression=condition,
                ExpressionAttributeNames={"#s": "status"},
                ExpressionAttributeValues=values(**named),
            )
        except ClientError as err:
            if not _conditional_failed(err):
                raise  # deleted or replaced meanwhile: nothing to record

    # -- endpoint sets ---------------------------------------------------------
    #
    # A set's records are compressed into `body`. Past CHUNK_BYTES (DynamoDB
    # items hold 400 KB at most) the rest goes into chunk items
    # `{id}#{write}#{n}` (`write` unique to each write), written before the main item that names them, so
    # a reader never sees a set whose chunks are missing; the previous
    # set's chunks are deleted after the switch.

    def _set(self, item: dict[str, Any], chunks: dict[str, bytes] | None = None) -> EndpointSet:
        body = item["body"]["B"] + b"".join((chunks or {})[key] for key in self._chunk_keys(item))
        return EndpointSet(
            namespace=item["namespace"]["S"],
            name=item["name"]["S"],
            region=item["region"]["S"],
            endpoints=decode_endpoints(body),
            version=item["version"]["S"],
            digest=item["digest"]["S"],
        )

    @staticmethod
    def _chunk_keys(item: dict[str, Any]) -> list[str]:
        count = int(item.get("chunks", {}).get("N", "1"))
        write = item.get("write", {}).get("S", "")
        return [f"{item['id']['S']}#{write}#{number}" for number in range(1, count)]

    def _batch_get(self, keys: list[str], consistent: bool, **projection: Any) -> list[dict[str, Any]]:
        """The items of `keys` that exist (BatchGetItem, 100 keys a request, unprocessed keys again)."""
        found: list[dict[str, Any]] = []
        for start in range(0, len(keys), 100):
            request = {
                self.endpoints_table: {
                    "Keys": [{"id": {"S": key}} for key in keys[start : start + 100]],
                    "ConsistentRead": consistent,
                    **projection,
                }
            }
            while request:
                answer = self._db.batch_get_item(RequestItems=request)
                found.extend(answer["Responses"].get(self.endpoints_table, ()))
                request = answer.get("UnprocessedKeys") or {}
        return found

    def _read_chunks(self, keys: list[str]) -> dict[str, bytes]:
        """Chunks are written once, before the head naming them, and never changed: an eventually
        consistent read is exact when it finds one, and only those it misses are read consistently."""
        found = {item["id"]["S"]: item["body"]["B"] for item in self._batch_get(keys, consistent=False)}
        missing = [key for key in keys if key not in found]
        if missing:
            found.update({item["id"]["S"]: item["body"]["B"] for item in self._batch_get(missing, consistent=True)})
        return found

    def endpoint_versions(self, keys: Iterable[str]) -> dict[str, str]:
        """The served version of each set that exists, from its head alone: what a 304 needs.

        One BatchGetItem per 100 sets, of the heads' `version` only: no records, no chunks, no
        decompression. A head written by this version is under 1 KB (`chunks.HEAD_BYTES`); one
        written before keeps its first records inline and costs its size until it is next rewritten.
        Read as `get_endpoint_set` reads the head (eventually consistent): a poll may see the previous
        version for a moment, never a version the set does not have.
        """
        wanted = list(dict.fromkeys(keys))
        items = self._batch_get(wanted, consistent=False, ProjectionExpression="id, version") if wanted else []
        return {item["id"]["S"]: item["version"]["S"] for item in items if "version" in item}

    def get_endpoint_set(self, namespace: str, name: str) -> EndpointSet | None:
        """The set as one writer wrote it: the head item, then its chunks.

        A writer deletes the previous chunks right after switching the head, so a reader that
        read the old head may find its chunks gone: it then re-reads the head (consistently)
        and follows the newer write. It never answers a mix, and never fails for this race.
        """
        key = {"id": {"S": f"{namespace}/{name}"}}
        answer = self._db.get_item(TableName=self.endpoints_table, Key=key)
        for _ in range(CHUNK_READ_ATTEMPTS):
            if "Item" not in answer:
                return None
            keys = self._chunk_keys(answer["Item"])
            if not keys:
                return self._remembered(answer["Item"], self._set(answer["Item"]))
            chunks = self._read_chunks(keys)
            if len(chunks) == len(keys):
                return self._remembered(answer["Item"], self._set(answer["Item"], chunks))
            answer = self._db.get_item(TableName=self.endpoints_table, Key=key, ConsistentRead=True)
        raise RuntimeError(f"endpoint set {namespace}/{name} was rewritten {CHUNK_READ_ATTEMPTS} times during one read")

    def _remembered(self, head: dict[str, Any], endpoint_set: EndpointSet) -> EndpointSet:
        """The set read, its head's write remembered: a guarded write of this set that expects this digest
        then knows which chunks it replaces without reading the head again (see `write_set`)."""
        if "write" in head:
            self._heads[endpoint_set.key] = {
                key: head[key] for key in ("id", "digest", "write", "chunks") if key in head
            }
        return endpoint_set

    def list_endpoint_sets(self) -> list[EndpointSet]:
        items = self._scan(self.endpoints_table)
        chunks = {item["id"]["S"]: item["body"]["B"] for item in items if "#" in item["id"]["S"]}
        sets = []
        for item in items:
            if "#" in item["id"]["S"] or item["id"]["S"].startswith("~"):
                continue
            if all(key in chunks for key in self._chunk_keys(item)):
                sets.append(self._set(item, chunks))
            else:  # rewritten while the table was scanned: read it again on its own
                again = self.get_endpoint_set(item["namespace"]["S"], item["name"]["S"])
                if again is not None:
                    sets.append(again)
        return sorted(sets, key=lambda endpoint_set: endpoint_set.key)

    def endpoint_digests(self) -> dict[str, str]:
        items = self._scan(self.endpoints_table, ProjectionExpression="id, digest", ConsistentRead=True)
        return {
            item["id"]["S"]: item["digest"]["S"]
            for item in items
            if "#" not in item["id"]["S"] and not item["id"]["S"].startswith("~")  # sets, not chunks or records
        }

    def set_digests(self, keys: Iterable[str]) -> dict[str, str]:
        """The digests of these sets (those that exist), read consistently, heads only."""
        wanted, found = sorted(set(keys)), {}
        for start in range(0, len(wanted), 100):  # BatchGetItem's limit
            request = {
                self.endpoints_table: {
                    "Keys": [{"id": {"S": key}} for key in wanted[start : start + 100]],
                    "ProjectionExpression": "id, digest",
                    "ConsistentRead": True,
                }
            }
            while request:
                answer = self._db.batch_get_item(RequestItems=request)
                for item in answer.get("Responses", {}).get(self.endpoints_table, ()):
                    found[item["id"]["S"]] = item["digest"]["S"]
                request = answer.get("UnprocessedKeys") or {}
        return found

    def put_endpoint_set(self, endpoint_set: EndpointSet, expected_digest: str | None) -> bool:
        return self.write_set(endpoint_set, expected_digest, Guard()) is Outcome.WRITTEN

    def write_set(self, endpoint_set: EndpointSet, expected_digest: str | None, guard: Guard) -> Outcome:
        if expected_digest is None:
            condition: dict[str, Any] = {"ConditionExpression": "attribute_not_exists(id)"}
        else:
            condition = {
                "ConditionExpression": "digest = :expected",
                "ExpressionAttributeValues": {":expected": {"S": expected_digest}},
            }
        item: dict[str, Any] = {
            **head_attributes(endpoint_set),
            # Chunks are named by this write, not by content: two writers of the same content
            # must never share (and so never delete) each other's chunks.
            "write": {"S": uuid.uuid4().hex},
        }
        parts = head_parts(encode_endpoints(endpoint_set.records()), item)  # the head stays under 1 KB
        item["chunks"] = {"N": str(len(parts))}
        item["body"] = {"B": parts[0]}
        chunk_keys = self._chunk_keys(item)
        for key, part in zip(chunk_keys, parts[1:], strict=True):
            self._db.put_item(TableName=self.endpoints_table, Item={"id": {"S": key}, "body": {"B": part}})
        checks = self._guard_checks(endpoint_set, guard)
        read = self._heads.pop(endpoint_set.key, None)
        try:
            if checks:  # the set and what it was derived from, checked and written atomically
                if read is not None and expected_digest is not None and read["digest"]["S"] == expected_digest:
                    # the head this writer read: replaced only if it is still that very write (so its chunks
                    # are the ones deleted below); any other write since, even of equal content, is a conflict
                    old: dict[str, Any] | None = read
                    condition = {
                        "ConditionExpression": "digest = :expected AND #w = :write",
                        "ExpressionAttributeNames": {"#w": "write"},
                        "ExpressionAttributeValues": {":expected": {"S": expected_digest}, ":write": read["write"]},
                    }
                else:
                    old = self.get_head(endpoint_set.key)
                self._db.transact_write_items(
                    TransactItems=[
                        *(check for check, _ in checks),
                        {"Put": {"TableName": self.endpoints_table, "Item": item, **condition}},
                    ]
                )
            else:
                old = self._db.put_item(
                    TableName=self.endpoints_table, Item=item, ReturnValues="ALL_OLD", **condition
                ).get("Attributes")
        except ClientError as err:
            outcome = self._refusal(err, [meaning for _, meaning in checks] + [Outcome.SET_CHANGED])
            if outcome is None:
                raise
            self._delete_keys(chunk_keys)
            return outcome
        if old and old.get("write") != item["write"]:
            self._delete_keys(self._chunk_keys(old))
        return Outcome.WRITTEN

    def get_head(self, key: str) -> dict[str, Any] | None:
        """The head item of a set (no chunks), read consistently: what a write replaces."""
        answer = self._db.get_item(
            TableName=self.endpoints_table,
            Key={"id": {"S": key}},
            ConsistentRead=True,
            ProjectionExpression="id, #w, chunks",
            ExpressionAttributeNames={"#w": "write"},
        )
        return answer.get("Item")

    def _guard_checks(self, endpoint_set: EndpointSet, guard: Guard) -> list[tuple[dict[str, Any], Outcome]]:
        """The transaction's condition checks, each with what its failure means."""
        checks: list[tuple[dict[str, Any], Outcome]] = []
        if guard.generation is not None:
            check = {
                "TableName": self.upstreams_table,
                "Key": {"id": {"S": endpoint_set.key}},
                **self._generation_condition(guard.generation),
            }
            checks.append(({"ConditionCheck": check}, Outcome.UPSTREAM_CHANGED))
        if guard.group is not None and (guard.version is not None or guard.instance is not None):
            if guard.instance is not None:
                expression, names, values = (
                    "#i = :t",
                    {"#i": SEEN_PREFIX + guard.instance[0]},
                    {":t": {"S": guard.instance[1]}},
                )
            else:
                expression, names, values = "version = :v", {}, {":v": {"N": str(guard.version)}}
                if guard.version == 0:  # no observation yet: the log must still not exist
                    expression = "attribute_not_exists(version)"
            observed: dict[str, Any] = {
                "TableName": self.upstreams_table,
                "Key": {"id": {"S": OBSERVATIONS_PREFIX + guard.group}},
                "ConditionExpression": expression,
            }
            if guard.version != 0 or guard.instance is not None:
                observed["ExpressionAttributeValues"] = values
            if names:
                observed["ExpressionAttributeNames"] = names
            checks.append(({"ConditionCheck": observed}, Outcome.OBSERVED))
        return checks

    @staticmethod
    def _refusal(err: ClientError, outcomes: list[Outcome]) -> Outcome | None:
        """Which condition refused a write, or None when the error is not a refusal.

        `outcomes` names what each transaction item's failed condition means, in order.
        """
        if _conditional_failed(err):
            return Outcome.SET_CHANGED
        if err.response.get("Error", {}).get("Code") != "TransactionCanceledException":
            return None
        reasons = [reason.get("Code") for reason in err.response.get("CancellationReasons", [])]
        if "ConditionalCheckFailed" not in reasons:
            return None  # a conflict with another transaction, throttling: the caller's retry applies
        return outcomes[reasons.index("ConditionalCheckFailed")]

    def delete_endpoint_set(self, namespace: str, name: str) -> None:
        answer = self._db.delete_item(
            TableName=self.endpoints_table, Key={"id": {"S": f"{namespace}/{name}"}}, ReturnValues="ALL_OLD"
        )
        if "Attributes" in answer:
            self._delete_keys(self._chunk_keys(answer["Attributes"]))

    def delete_orphan_set(self, namespace: str, name: str) -> bool:
        key = {"id": {"S": f"{namespace}/{name}"}}
        old = self.get_head(f"{namespace}/{name}")
        if old is None:
            return False
        try:
            self._db.transact_write_items(
                TransactItems=[
                    {
                        "ConditionCheck": {
                            "TableName": self.upstreams_table,
                            "Key": key,
                            "ConditionExpression": "attribute_not_exists(id)",
                        }
                    },
                    {"Delete": {"TableName": self.endpoints_table, "Key": key}},
                ]
            )
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") == "TransactionCanceledException":
                return False  # the upstream exists (again): its set stays
            raise
        self._delete_keys(self._chunk_keys(old))
        return True

    # -- observation logs: per group, when an event last observed each instance ------------------

    def observe(self, group: str, instance_id: str, at: str) -> bool:
        # One attribute per instance (`seen:<id>`), so the first observation of a group creates
        # the item in the same single write.
        try:
            self._db.update_item(
                TableName=self.upstreams_table,
                Key={"id": {"S": OBSERVATIONS_PREFIX + group}},
                UpdateExpression="SET #i = :t ADD version :one",
                ConditionExpression="attribute_not_exists(#i) OR #i < :t",
                ExpressionAttributeNames={"#i": SEEN_PREFIX + instance_id},
                ExpressionAttributeValues={":t": {"S": at}, ":one": {"N": "1"}},
            )
            return True
        except ClientError as err:
            if _conditional_failed(err):
                return False  # a newer observation is recorded
            raise

    def observations(self, group: str) -> Observations:
        answer = self._db.get_item(
            TableName=self.upstreams_table, Key={"id": {"S": OBSERVATIONS_PREFIX + group}}, ConsistentRead=True
        )
        item = answer.get("Item")
        if not item:
            return Observations()
        seen = {key.removeprefix(SEEN_PREFIX): value["S"] for key, value in item.items() if key.startswith(SEEN_PREFIX)}
        return Observations(int(item.get("version", {}).get("N", "0")), seen)

    def prune_observations(self, group: str, before: str) -> None:
        old = sorted(instance for instance, at in self.observations(group).seen.items() if at < before)
        for start in range(0, len(old), 100):
            names = {f"#k{number}": SEEN_PREFIX + key for number, key in enumerate(old[start : start + 100])}
            try:
                self._db.update_item(
                    TableName=self.upstreams_table,
                    Key={"id": {"S": OBSERVATIONS_PREFIX + group}},
                    UpdateExpression="REMOVE " + ", ".join(names),
                    ConditionExpression=" AND ".join(f"{name} < :before" for name in names),
                    ExpressionAttributeNames=names,
                    ExpressionAttributeValues={":before": {"S": before}},
                )
            except ClientError as err:
                if not _conditional_failed(err):
                    raise  # else observed again meanwhile: the next scan prunes

    # -- membership records: which sets of a group an event left an instance in -------------------------
    #
    # `~in/<group>/<instance>` in the endpoints table: `keys` (a string set, absent when empty), `at`,
    # `tags` (JSON). `hold` only adds keys; `release` removes them only for the newest observation.

    @staticmethod
    def _membership_key(group: str, instance_id: str) -> dict[str, Any]:
        return {"id": {"S": f"{MEMBERSHIP_PREFIX}{group}/{instance_id}"}}

    def holding(self, group: str, instance_id: str) -> Holding | None:
        item = self._db.get_item(
            TableName=self.endpoints_table, Key=self._membership_key(group, instance_id), ConsistentRead=True
        ).get("Item")
        if not item or "at" not in item:
            return None
        tags = tuple((str(key), str(value)) for key, value in json.loads(item.get("tags", {}).get("S", "[]")))
        return Holding(frozenset(item.get("keys", {}).get("SS", ())), item["at"]["S"], tags)

    def hold(
        self, group: str, instance_id: str, keys: Iterable[str], at: str, tags: tuple[tuple[str, str], ...]
    ) -> None:
        added = sorted(set(keys))
        values: dict[str, Any] = {":at": {"S": at}, ":tags": {"S": json.dumps([list(pair) for pair in tags])}}
        adding = ""
        if added:
            values[":keys"] = {"SS": added}
            adding = " ADD #k :keys"
        try:
            self._db.update_item(
                TableName=self.endpoints_table,
                Key=self._membership_key(group, instance_id),
                UpdateExpression="SET #at = :at, tags = :tags" + adding,
                ConditionExpression="attribute_not_exists(#at) OR #at < :at",
                ExpressionAttributeNames={"#at": "at", **({"#k": "keys"} if added else {})},
                ExpressionAttributeValues=values,
            )
        except ClientError as err:
            if not _conditional_failed(err):
                raise
            if added:  # a newer observation is recorded: the record still only grows
                self._db.update_item(
                    TableName=self.endpoints_table,
                    Key=self._membership_key(group, instance_id),
                    UpdateExpression="ADD #k :keys",
                    ExpressionAttributeNames={"#k": "keys"},
                    ExpressionAttributeValues={":keys": {"SS": added}},
                )

    def release(self, group: str, instance_id: str, keys: Iterable[str], at: str) -> None:
        gone = sorted(set(keys))
        if not gone:
            return
        try:
            self._db.update_item(
                TableName=self.endpoints_table,
                Key=self._membership_key(group, instance_id),
                UpdateExpression="DELETE #k :keys",
                ConditionExpression="#at = :at",
                ExpressionAttributeNames={"#k": "keys", "#at": "at"},
                ExpressionAttributeValues={":keys": {"SS": gone}, ":at": {"S": at}},
            )
        except ClientError as err:
            if not _conditional_failed(err):
                raise  # else a newer observation is being applied: the record keeps the keys

    def _delete_keys(self, keys: list[str]) -> None:
        for key in keys:
            self._db.delete_item(TableName=self.endpoints_table, Key={"id": {"S": key}})

    # -- scan marks ------------------------------------------------------------

    # One item, `~scan`: `planned`, and one attribute per group behind (`b:<group>`) or listed by a
    # narrowed scan (`l:<group>`), so that workers of different groups never overwrite each other.

    def get_scan_record(self) -> ScanRecord:
        answer = self._db.get_item(
            TableName=self.upstreams_table, Key={"id": {"S": SCAN_MARKS_ID}}, ConsistentRead=True
        )
        item = answer.get("Item", {})
        legacy = json.loads(item["marks"]["S"]) if "marks" in item else {}  # group -> time, before the record
        behind = {name[2:]: value["S"] for name, value in item.items() if name.startswith(BEHIND)}
        listed = {name[2:]: value["S"] for name, value in item.items() if name.startswith(LISTED)}
        return ScanRecord(item["planned"]["S"] if "planned" in item else None, behind, {**legacy, **listed})

    def get_scan_marks(self) -> dict[str, str]:
        return self.get_scan_record().as_marks()

    def plan_scan(self, at: str, forget: Iterable[str] = ()) -> None:
        names = {"#p": "planned", "#m": "marks"}
        names.update({f"#f{n}": f"{prefix}{group}" for n, (prefix, group) in enumerate(_both(forget))})
        removed = ", ".join(name for name in names if name.startswith("#f") or name == "#m")
        self._db.update_item(
            TableName=self.upstreams_table,
            Key={"id": {"S": SCAN_MARKS_ID}},
            UpdateExpression=f"SET #p = :at REMOVE {removed}",
            ExpressionAttributeNames=names,
            ExpressionAttributeValues={":at": {"S": at}},
        )

    def fall_behind(self, group: str, last_ok: str) -> None:
        self._db.update_item(
            TableName=self.upstreams_table,
            Key={"id": {"S": SCAN_MARKS_ID}},
            UpdateExpression="SET #b = if_not_exists(#b, :ok)",
            ExpressionAttributeNames={"#b": f"{BEHIND}{group}"},
            ExpressionAttributeValues={":ok": {"S": last_ok}},
        )

    def catch_up(self, group: str) -> None:
        self._db.update_item(
            TableName=self.upstreams_table,
            Key={"id": {"S": SCAN_MARKS_ID}},
            UpdateExpression="REMOVE #b",
            ExpressionAttributeNames={"#b": f"{BEHIND}{group}"},
        )

    def mark_listed(self, group: str, at: str) -> None:
        self._db.update_item(
            TableName=self.upstreams_table,
            Key={"id": {"S": SCAN_MARKS_ID}},
            UpdateExpression="SET #l = :at",
            ExpressionAttributeNames={"#l": f"{LISTED}{group}"},
            ExpressionAttributeValues={":at": {"S": at}},
        )

    # -- marks: small maps of key -> time (DRAINING instances, MISSING discovered upstreams) --------
    #
    # One item per kind, one map attribute per key, so concurrent marks never overwrite each other.

    def set_mark(self, kind: str, mark: str, value: str) -> None:
        for _ in range(3):
            try:
                self._db.update_item(
                    TableName=self.upstreams_table,
                    Key=item_key(f"~{kind}"),
                    UpdateExpression="SET marks.#k = :v",
                    ConditionExpression="attribute_exists(marks)",
                    ExpressionAttributeNames={"#k": mark},
                    ExpressionAttributeValues=values(v=value),
                )
                return
            except ClientError as err:
                if not _conditional_failed(err):
                    raise
            try:  # the first mark of its kind: create the map, then set the attribute
                self._db.put_item(
                    TableName=self.upstreams_table,
                    Item=to_item({"id": f"~{kind}", "marks": {}}),
                    ConditionExpression="attribute_not_exists(id)",
                )
            except ClientError as err:
                if not _conditional_failed(err):
                    raise
        raise RuntimeError(f"could not set the {kind} mark of {mark}")

    def get_marks(self, kind: str) -> dict[str, str]:
        answer = self._db.get_item(TableName=self.upstreams_table, Key=item_key(f"~{kind}"), ConsistentRead=True)
        marks: dict[str, str] = from_item(answer.get("Item", {})).get("marks", {})
        return marks

    def forget_marks(self, kind: str, keys: Iterable[str]) -> None:
        names = {f"#k{number}": mark for number, mark in enumerate(sorted(keys))}
        if not names:
            return
        try:
            self._db.update_item(
                TableName=self.upstreams_table,
                Key=item_key(f"~{kind}"),
                UpdateExpression="REMOVE " + ", ".join(f"marks.{name}" for name in names),
                ConditionExpression="attribute_exists(marks)",
                ExpressionAttributeNames=names,
            )
        except ClientError as err:
            if not _conditional_failed(err):
                raise

    # -- named accounts ---------------------------------------------------------

    def put_account(self, account: Account) -> None:
        from chalicelib.domain.models import AccountItem

        item = AccountItem(id=ACCOUNT_PREFIX + account.name, account=account)
        self._db.put_item(TableName=self.upstreams_table, Item=to_item(item.model_dump()))

    @staticmethod
    def _account(attributes: dict[str, Any]) -> Account:
        from chalicelib.domain.models import AccountItem

        return AccountItem.model_validate(from_item(attributes)).account

    def get_account(self, name: str) -> Account | None:
        answer = self._db.get_item(
            TableName=self.upstreams_table, Key=item_key(ACCOUNT_PREFIX + name), ConsistentRead=True
        )
        return self._account(answer["Item"]) if "Item" in answer else None

    def list_accounts(self) -> list[Account]:
        items = self._scan(
            self.upstreams_table,
            FilterExpression="begins_with(id, :prefix)",
            ExpressionAttributeValues=values(prefix=ACCOUNT_PREFIX),
            ConsistentRead=True,
        )
        return sorted((self._account(item) for item in items), key=lambda account: account.name)

    def delete_account(self, name: str) -> bool:
        answer = self._db.delete_item(
            TableName=self.upstreams_table, Key=item_key(ACCOUNT_PREFIX + name), ReturnValues="ALL_OLD"
        )
        return "Attributes" in answer

    def _scan(self, table: str, **request: Any) -> list[dict[str, Any]]:
        paginator = self._db.get_paginator("scan")
        return [item for page in paginator.paginate(TableName=table, **request) for item in page.get("Items", ())]


def table_definitions(upstreams_table: str, endpoints_table: str) -> list[dict[str, Any]]:
    """CreateTable requests for both tables (the CloudFormation template mirrors these)."""
    return [
        {
            "TableName": name,
            "AttributeDefinitions": [{"AttributeName": "id", "AttributeType": "S"}],
            "KeySchema": [{"AttributeName": "id", "KeyType": "HASH"}],
            "BillingMode": "PAY_PER_REQUEST",
            "SSESpecification": {"Enabled": True},
        }
        for name in (upstreams_table, endpoints_table)
    ]


BEHIND, LISTED = "b:", "l:"  # attribute prefixes of the scan record


def _both(groups: Iterable[str]) -> list[tuple[str, str]]:
    return [(prefix, group) for group in sorted(set(groups)) for prefix in (BEHIND, LISTED)]
