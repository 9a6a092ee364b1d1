"""How documents and endpoint records are encoded for DynamoDB: compressed, and split into chunks past one item."""

from __future__ import annotations

import json
import zlib
from typing import Any

from chalicelib.domain.endpoints import Endpoint

CHUNK_BYTES = 350_000  # of compressed endpoint records per item, under DynamoDB's 400 KB item limit
CHUNK_READ_ATTEMPTS = 5


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


def decode_document(stored: bytes | str) -> Any:
    if isinstance(stored, bytes):
        return json.loads(zlib.decompress(stored))
    return json.loads(stored)  # written before documents were compressed


def encode_endpoints(records: list[bytes]) -> bytes:
    """The endpoints' records (each one's canonical JSON, `EndpointSet.records`) as one compressed JSON list."""
    return zlib.compress(b"[" + b",".join(records) + b"]", 6)


def decode_endpoints(body: bytes) -> tuple[Endpoint, ...]:
    return tuple(Endpoint.from_record(record) for record in json.loads(zlib.decompress(body)))


def split(body: bytes) -> list[bytes]:
    """A compressed body in parts of at most CHUNK_BYTES (one part, possibly empty, at least)."""
    return [body[start : start + CHUNK_BYTES] for start in range(0, len(body), CHUNK_BYTES)] or [b""]


# A set's head item (version, digest, count, where its chunks are) stays under HEAD_BYTES, so a poll
# that only compares versions (a 304) reads one item of under 1 KB whatever the set's size: the
# records go into the head only when the whole head still fits, else every part goes into chunk items
# and the head keeps an empty `body` (the layout readers have always followed: head body, then
# chunks 1..n-1, so a reader of either age reads sets written by either).
HEAD_BYTES = 1000  # DynamoDB rounds a read up to 4 KB; 1 KB keeps room for attributes added later


def _value_bytes(value: dict[str, Any]) -> int:
    """DynamoDB's size of one attribute value (numbers: at most 21 bytes)."""
    ((kind, content),) = value.items()
    if kind == "S":
        return len(content.encode())
    if kind == "B":
        return len(content)
    if kind == "N":
        return min(21, len(content.lstrip("-").replace(".", "").strip("0")) // 2 + 1)
    if kind in ("BOOL", "NULL"):
        return 1
    if kind == "M":
        return 3 + sum(len(name.encode()) + _value_bytes(inner) + 1 for name, inner in content.items())
    if kind == "L":
        return 3 + sum(_value_bytes(inner) + 1 for inner in content)
    return sum(len(part.encode()) if isinstance(part, str) else len(part) for part in content)  # SS, BS, NS


def item_bytes(item: dict[str, Any]) -> int:
    """An item's size as DynamoDB counts it for capacity: attribute names plus values."""
    return sum(len(name.encode()) + _value_bytes(value) for name, value in item.items())


def head_parts(body: bytes, head: dict[str, Any]) -> list[bytes]:
    """The parts of a compressed body: part 0 goes into the head item (`head`, without `body` and
    `chunks`), the rest into chunk items. Part 0 is the whole body when the head stays under
    HEAD_BYTES with it, else empty."""
    bare = item_bytes(head) + len("body") + len("chunks") + 21
    if bare + len(body) <= HEAD_BYTES:
        return [body]
    return [b"", *split(body)]
