"""How documents and endpoint records are encoded for DynamoDB: compressed, and split into chunks past one item."""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterable
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


def encode_endpoints(endpoints: Iterable[Endpoint]) -> bytes:
    records = [endpoint.record() for endpoint in endpoints]
    return zlib.compress(json.dumps(records, separators=(",", ":")).encode(), 6)


def decode_endpoints(body: bytes) -> tuple[Endpoint, ...]:
    return tuple(Endpoint.from_record(record) for record in json.loads(zlib.decompress(body)))


def split(body: bytes) -> list[bytes]:
    """A compressed body in parts of at most CHUNK_BYTES (one part, possibly empty, at least)."""
    return [body[start : start + CHUNK_BYTES] for start in range(0, len(body), CHUNK_BYTES)] or [b""]
