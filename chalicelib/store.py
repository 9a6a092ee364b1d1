"""Where upstreams, their status and their endpoint sets live.

`Store` is the interface the logic sees, with two implementations: in
memory (tests, benchmarks) and DynamoDB. Endpoint sets are written with a
condition on the digest the writer last read, so two writers (a scan and
an event) never overwrite each other's newer result unnoticed.

Tables (partition key `id`, a string):
- upstreams: `namespace/name` -> document (zlib-compressed JSON), status, updatedAt; plus
  `~scan` (the last successful listing time of each group), `~draining`
  (instances under an interruption warning, until when), `~missing`
  (discovered upstreams whose instances are gone, since when) and
  `~account/NAME` (named accounts).
- endpoints: `namespace/name` -> namespace, name, region, version and digest
  (see EndpointSet), count and `body`, the endpoint
  records as zlib-compressed JSON, continued in chunk items past 350 KB.
"""

from __future__ import annotations

import copy
import json
import threading
import uuid
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from botocore.exceptions import ClientError

from .accounts import Account
from .endpoints import Endpoint, EndpointSet
from .spec import SpecError, Upstream, parse_upstream

SCAN_MARKS_ID = "~scan"
DRAINING, MISSING = "draining", "missing"  # kinds of marks
ACCOUNT_PREFIX = "~account/"
CHUNK_BYTES = 350_000  # of compressed endpoint records per item, under DynamoDB's 400 KB item limit
ACCEPTED, REJECTED, ERROR = "Accepted", "Rejected", "Error"


@dataclass(frozen=True, slots=True)
class Status:
    state: str
    reason: str
    endpoints: int = 0
    skipped: int = 0
    code: str | None = None
    port_fallbacks: int = 0
    weight_fallbacks: int = 0

    def as_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "state": self.state,
            "reason": self.reason,
            "endpoints": self.endpoints,
            "skipped": self.skipped,
        }
        if self.code:
            data["code"] = self.code
        if self.port_fallbacks:
            data["portFallbacks"] = self.port_fallbacks
        if self.weight_fallbacks:
            data["weightFallbacks"] = self.weight_fallbacks
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Status:
        if not data:
            return PENDING
        return cls(
            state=str(data["state"]),
            reason=str(data.get("reason", "")),
            endpoints=int(data.get("endpoints", 0)),
            skipped=int(data.get("skipped", 0)),
            code=data.get("code"),
            port_fallbacks=int(data.get("portFallbacks", 0)),
            weight_fallbacks=int(data.get("weightFallbacks", 0)),
        )


PENDING = Status(ACCEPTED, "waiting for the first scan")


@dataclass(frozen=True, slots=True)
class StoredUpstream:
    """An upstream as stored: its document, the parsed upstream (None if it no longer parses), status."""

    namespace: str
    name: str
    document: dict[str, Any]
    status: Status
    updated_at: str
    upstream: Upstream | None = None
    problem: SpecError | None = field(default=None)
    recorded: Status | None = None  # the status in the store, when `status` differs from it

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


def stored(namespace: str, name: str, document: dict[str, Any], status: Status, updated_at: str) -> StoredUpstream:
    """Re-validate a stored document, so a document that no longer parses is `Rejected`, not a crash."""
    try:
        upstream = parse_upstream(document, namespace, name)
        return StoredUpstream(namespace, name, document, status, updated_at, upstream)
    except SpecError as err:
        rejected = Status(REJECTED, err.message)
        return StoredUpstream(namespace, name, document, rejected, updated_at, None, err, status)


class Store(Protocol):
    def put_upstream(self, upstream: Upstream, now: str) -> None: ...

    def get_upstream(self, namespace: str, name: str) -> StoredUpstream | None: ...

    def list_upstreams(self) -> list[StoredUpstream]: ...

    def delete_upstream(self, namespace: str, name: str) -> bool: ...

    def put_status(self, namespace: str, name: str, status: Status) -> None: ...

    def get_endpoint_set(self, namespace: str, name: str) -> EndpointSet | None: ...

    def list_endpoint_sets(self) -> list[EndpointSet]: ...

    def endpoint_digests(self) -> dict[str, str]: ...

    def put_endpoint_set(self, endpoint_set: EndpointSet, expected_digest: str | None) -> bool: ...

    def delete_endpoint_set(self, namespace: str, name: str) -> None: ...

    def get_scan_marks(self) -> dict[str, str]: ...

    def put_scan_marks(self, marks: dict[str, str]) -> None: ...

    def set_mark(self, kind: str, key: str, value: str) -> None: ...

    def get_marks(self, kind: str) -> dict[str, str]: ...

    def forget_marks(self, kind: str, keys: Iterable[str]) -> None: ...

    def put_account(self, account: Account) -> None: ...

    def get_account(self, name: str) -> Account | None: ...

    def list_accounts(self) -> list[Account]: ...

    def delete_account(self, name: str) -> bool: ...


def active_draining(marks: dict[str, str], now: str) -> frozenset[str]:
    """The instances whose draining mark has not expired."""
    return frozenset(instance for instance, until in marks.items() if until > now)


class DocumentTooLarge(ValueError):
    """A document that validates but cannot be stored in one DynamoDB item, even compressed."""


MAX_DOCUMENT_BYTES = 350_000  # compressed, under DynamoDB's 400 KB item limit


def encode_document(document: dict[str, Any]) -> bytes:
    """A Gloo document, compressed for storage; DocumentTooLarge past one item."""
    body = zlib.compress(json.dumps(document, separators=(",", ":")).encode(), 6)
    if len(body) > MAX_DOCUMENT_BYTES:
        raise DocumentTooLarge(
            f"the document compresses to {len(body)} bytes; at most {MAX_DOCUMENT_BYTES} can be stored"
        )
    return body


def decode_document(attribute: dict[str, Any]) -> Any:
    if "B" in attribute:
        return json.loads(zlib.decompress(attribute["B"]))
    return json.loads(attribute["S"])  # written before documents were compressed


def encode_endpoints(endpoints: Iterable[Endpoint]) -> bytes:
    records = [endpoint.record() for endpoint in endpoints]
    return zlib.compress(json.dumps(records, separators=(",", ":")).encode(), 6)


def decode_endpoints(body: bytes) -> tuple[Endpoint, ...]:
    return tuple(Endpoint.from_record(record) for record in json.loads(zlib.decompress(body)))


class MemoryStore:
    """The in-memory twin of `DynamoStore`, for the pure tests and benchmarks."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.upstreams: dict[str, dict[str, Any]] = {}
        self.sets: dict[str, EndpointSet] = {}
        self.marks: dict[str, str] = {}
        self.marks_by_kind: dict[str, dict[str, str]] = {}
        self.accounts: dict[str, Account] = {}
        self.writes = 0

    def put_upstream(self, upstream: Upstream, now: str) -> None:
        with self._lock:
            self.writes += 1
            encode_document(upstream.document)  # the same limit as DynamoDB
            self.upstreams[upstream.key] = {
                "namespace": upstream.namespace,
                "name": upstream.name,
                "document": json.dumps(upstream.document),
                "status": PENDING.as_dict(),
                "updatedAt": now,
            }

    def _load(self, item: dict[str, Any]) -> StoredUpstream:
        return stored(
            item["namespace"],
            item["name"],
            json.loads(item["document"]),
            Status.from_dict(copy.deepcopy(item["status"])),
            item["updatedAt"],
        )

    def get_upstream(self, namespace: str, name: str) -> StoredUpstream | None:
        item = self.upstreams.get(f"{namespace}/{name}")
        return self._load(item) if item else None

    def list_upstreams(self) -> list[StoredUpstream]:
        return [self._load(item) for _, item in sorted(self.upstreams.items())]

    def delete_upstream(self, namespace: str, name: str) -> bool:
        with self._lock:
            existed = self.upstreams.pop(f"{namespace}/{name}", None) is not None
            self.sets.pop(f"{namespace}/{name}", None)
            self.writes += 2
        return existed

    def put_status(self, namespace: str, name: str, status: Status) -> None:
        with self._lock:
            item = self.upstreams.get(f"{namespace}/{name}")
            if item is not None:
                self.writes += 1
                item["status"] = status.as_dict()

    def get_endpoint_set(self, namespace: str, name: str) -> EndpointSet | None:
        return self.sets.get(f"{namespace}/{name}")

    def list_endpoint_sets(self) -> list[EndpointSet]:
        return [self.sets[key] for key in sorted(self.sets)]

    def endpoint_digests(self) -> dict[str, str]:
        return {key: endpoint_set.digest for key, endpoint_set in self.sets.items()}

    def put_endpoint_set(self, endpoint_set: EndpointSet, expected_digest: str | None) -> bool:
        with self._lock:
            current = self.sets.get(endpoint_set.key)
            if (current.digest if current else None) != expected_digest:
                return False
            self.writes += 1
            self.sets[endpoint_set.key] = endpoint_set
            return True

    def delete_endpoint_set(self, namespace: str, name: str) -> None:
        with self._lock:
            self.writes += 1
            self.sets.pop(f"{namespace}/{name}", None)

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


def _conditional_failed(err: ClientError) -> bool:
    return err.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException"


class DynamoStore:
    """`Store` over two DynamoDB tables, through the low-level client."""

    def __init__(self, client: Any, upstreams_table: str, endpoints_table: str) -> None:
        self._db = client
        self.upstreams_table = upstreams_table
        self.endpoints_table = endpoints_table

    # -- upstreams -------------------------------------------------------------

    def put_upstream(self, upstream: Upstream, now: str) -> None:
        self._db.put_item(
            TableName=self.upstreams_table,
            Item={
                "id": {"S": upstream.key},
                "namespace": {"S": upstream.namespace},
                "name": {"S": upstream.name},
                "document": {"B": encode_document(upstream.document)},
                "status": {"S": json.dumps(PENDING.as_dict())},
                "updatedAt": {"S": now},
            },
        )

    @staticmethod
    def _load(item: dict[str, Any]) -> StoredUpstream:
        return stored(
            item["namespace"]["S"],
            item["name"]["S"],
            decode_document(item["document"]),
            Status.from_dict(json.loads(item["status"]["S"])) if "status" in item else PENDING,
            item.get("updatedAt", {}).get("S", ""),
        )

    def get_upstream(self, namespace: str, name: str) -> StoredUpstream | None:
        answer = self._db.get_item(
            TableName=self.upstreams_table, Key={"id": {"S": f"{namespace}/{name}"}}, ConsistentRead=True
        )
        return self._load(answer["Item"]) if "Item" in answer else None

    def list_upstreams(self) -> list[StoredUpstream]:
        items = self._scan(self.upstreams_table, ConsistentRead=True)
        return sorted(
            (self._load(item) for item in items if not item["id"]["S"].startswith("~")),
            key=lambda entry: entry.key,
        )

    def delete_upstream(self, namespace: str, name: str) -> bool:
        answer = self._db.delete_item(
            TableName=self.upstreams_table,
            Key={"id": {"S": f"{namespace}/{name}"}},
            ReturnValues="ALL_OLD",
        )
        self.delete_endpoint_set(namespace, name)
        return "Attributes" in answer

    def put_status(self, namespace: str, name: str, status: Status) -> None:
        try:
            self._db.update_item(
                TableName=self.upstreams_table,
                Key={"id": {"S": f"{namespace}/{name}"}},
                UpdateExpression="SET #s = :s",
                ConditionExpression="attribute_exists(id)",
                ExpressionAttributeNames={"#s": "status"},
                ExpressionAttributeValues={":s": {"S": json.dumps(status.as_dict())}},
            )
        except ClientError as err:
            if not _conditional_failed(err):
                raise  # deleted meanwhile: nothing to record

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

    def _read_chunks(self, keys: list[str]) -> dict[str, bytes]:
        found: dict[str, bytes] = {}
        for start in range(0, len(keys), 100):
            request = {
                self.endpoints_table: {
                    "Keys": [{"id": {"S": key}} for key in keys[start : start + 100]],
                    "ConsistentRead": True,
                }
            }
            while request:
                answer = self._db.batch_get_item(RequestItems=request)
                for item in answer["Responses"].get(self.endpoints_table, ()):
                    found[item["id"]["S"]] = item["body"]["B"]
                request = answer.get("UnprocessedKeys") or {}
        missing = [key for key in keys if key not in found]
        if missing:
            raise RuntimeError(f"endpoint set chunks missing: {missing[:3]}")
        return found

    def get_endpoint_set(self, namespace: str, name: str) -> EndpointSet | None:
        answer = self._db.get_item(TableName=self.endpoints_table, Key={"id": {"S": f"{namespace}/{name}"}})
        if "Item" not in answer:
            return None
        keys = self._chunk_keys(answer["Item"])
        return self._set(answer["Item"], self._read_chunks(keys) if keys else None)

    def list_endpoint_sets(self) -> list[EndpointSet]:
        items = self._scan(self.endpoints_table)
        chunks = {item["id"]["S"]: item["body"]["B"] for item in items if "#" in item["id"]["S"]}
        return sorted((self._set(item, chunks) for item in items if "#" not in item["id"]["S"]), key=lambda s: s.key)

    def endpoint_digests(self) -> dict[str, str]:
        items = self._scan(self.endpoints_table, ProjectionExpression="id, digest", ConsistentRead=True)
        return {item["id"]["S"]: item["digest"]["S"] for item in items if "#" not in item["id"]["S"]}

    def put_endpoint_set(self, endpoint_set: EndpointSet, expected_digest: str | None) -> bool:
        if expected_digest is None:
            condition: dict[str, Any] = {"ConditionExpression": "attribute_not_exists(id)"}
        else:
            condition = {
                "ConditionExpression": "digest = :expected",
                "ExpressionAttributeValues": {":expected": {"S": expected_digest}},
            }
        body = encode_endpoints(endpoint_set.endpoints)
        parts = [body[start : start + CHUNK_BYTES] for start in range(0, len(body), CHUNK_BYTES)] or [b""]
        item = {
            "id": {"S": endpoint_set.key},
            "namespace": {"S": endpoint_set.namespace},
            "name": {"S": endpoint_set.name},
            "region": {"S": endpoint_set.region},
            "version": {"S": endpoint_set.version},
            "digest": {"S": endpoint_set.digest},
            "count": {"N": str(len(endpoint_set.endpoints))},
            "chunks": {"N": str(len(parts))},
            # Chunks are named by this write, not by content: two writers of the same content
            # must never share (and so never delete) each other's chunks.
            "write": {"S": uuid.uuid4().hex},
            "body": {"B": parts[0]},
        }
        chunk_keys = self._chunk_keys(item)
        for key, part in zip(chunk_keys, parts[1:], strict=True):
            self._db.put_item(TableName=self.endpoints_table, Item={"id": {"S": key}, "body": {"B": part}})
        try:
            answer = self._db.put_item(TableName=self.endpoints_table, Item=item, ReturnValues="ALL_OLD", **condition)
        except ClientError as err:
            if _conditional_failed(err):
                self._delete_keys(chunk_keys)
                return False
            raise
        old = answer.get("Attributes")
        if old:
            self._delete_keys(self._chunk_keys(old))
        return True

    def delete_endpoint_set(self, namespace: str, name: str) -> None:
        answer = self._db.delete_item(
            TableName=self.endpoints_table, Key={"id": {"S": f"{namespace}/{name}"}}, ReturnValues="ALL_OLD"
        )
        if "Attributes" in answer:
            self._delete_keys(self._chunk_keys(answer["Attributes"]))

    def _delete_keys(self, keys: list[str]) -> None:
        for key in keys:
            self._db.delete_item(TableName=self.endpoints_table, Key={"id": {"S": key}})

    # -- scan marks ------------------------------------------------------------

    def get_scan_marks(self) -> dict[str, str]:
        answer = self._db.get_item(TableName=self.upstreams_table, Key={"id": {"S": SCAN_MARKS_ID}})
        return json.loads(answer["Item"]["marks"]["S"]) if "Item" in answer else {}

    def put_scan_marks(self, marks: dict[str, str]) -> None:
        self._db.put_item(
            TableName=self.upstreams_table,
            Item={"id": {"S": SCAN_MARKS_ID}, "marks": {"S": json.dumps(marks, sort_keys=True)}},
        )

    # -- marks: small maps of key -> time (DRAINING instances, MISSING discovered upstreams) --------
    #
    # One item per kind, one map attribute per key, so concurrent marks never overwrite each other.

    def set_mark(self, kind: str, key: str, value: str) -> None:
        item_id = {"S": f"~{kind}"}
        for _ in range(3):
            try:
                self._db.update_item(
                    TableName=self.upstreams_table,
                    Key={"id": item_id},
                    UpdateExpression="SET marks.#k = :v",
                    ConditionExpression="attribute_exists(marks)",
                    ExpressionAttributeNames={"#k": key},
                    ExpressionAttributeValues={":v": {"S": value}},
                )
                return
            except ClientError as err:
                if not _conditional_failed(err):
                    raise
            try:  # the first mark of its kind: create the map, then set the attribute
                self._db.put_item(
                    TableName=self.upstreams_table,
                    Item={"id": item_id, "marks": {"M": {}}},
                    ConditionExpression="attribute_not_exists(id)",
                )
            except ClientError as err:
                if not _conditional_failed(err):
                    raise
        raise RuntimeError(f"could not set the {kind} mark of {key}")

    def get_marks(self, kind: str) -> dict[str, str]:
        answer = self._db.get_item(TableName=self.upstreams_table, Key={"id": {"S": f"~{kind}"}}, ConsistentRead=True)
        return {key: value["S"] for key, value in answer.get("Item", {}).get("marks", {}).get("M", {}).items()}

    def forget_marks(self, kind: str, keys: Iterable[str]) -> None:
        names = {f"#k{number}": key for number, key in enumerate(sorted(keys))}
        if not names:
            return
        try:
            self._db.update_item(
                TableName=self.upstreams_table,
                Key={"id": {"S": f"~{kind}"}},
                UpdateExpression="REMOVE " + ", ".join(f"marks.{name}" for name in names),
                ConditionExpression="attribute_exists(marks)",
                ExpressionAttributeNames=names,
            )
        except ClientError as err:
            if not _conditional_failed(err):
                raise

    # -- named accounts ---------------------------------------------------------

    def put_account(self, account: Account) -> None:
        self._db.put_item(
            TableName=self.upstreams_table,
            Item={"id": {"S": ACCOUNT_PREFIX + account.name}, "account": {"S": account.model_dump_json()}},
        )

    def get_account(self, name: str) -> Account | None:
        answer = self._db.get_item(
            TableName=self.upstreams_table, Key={"id": {"S": ACCOUNT_PREFIX + name}}, ConsistentRead=True
        )
        return Account.model_validate_json(answer["Item"]["account"]["S"]) if "Item" in answer else None

    def list_accounts(self) -> list[Account]:
        items = self._scan(
            self.upstreams_table,
            FilterExpression="begins_with(id, :prefix)",
            ExpressionAttributeValues={":prefix": {"S": ACCOUNT_PREFIX}},
            ConsistentRead=True,
        )
        return sorted((Account.model_validate_json(item["account"]["S"]) for item in items), key=lambda a: a.name)

    def delete_account(self, name: str) -> bool:
        answer = self._db.delete_item(
            TableName=self.upstreams_table, Key={"id": {"S": ACCOUNT_PREFIX + name}}, ReturnValues="ALL_OLD"
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
