"""The catalog's parse memo (`status.ParsedDocuments`): a store lists every upstream for each event batch
and scan plan, and validates each document once per content. Whatever the sequence of edits, reads and
memo resets, what it returns must be what validating the stored document afresh returns: an edit is never
served from an older parse, and a document that no longer validates is `Rejected` with its own reason.
"""

from __future__ import annotations

import json
import zlib
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from chalicelib.domain.status import ACCEPTED, REJECTED, ParsedDocuments, Status, stored
from tests.profiles import examples

STATUS = Status(ACCEPTED, "scanned", endpoints=3)


def document(region: str, filters: list[dict[str, Any]], port: Any = 80) -> dict[str, Any]:
    return {"spec": {"awsEc2": {"region": region, "filters": filters, "port": port}}}


VARIANTS = [
    document("us-east-1", [{"key": "app"}]),
    document("us-east-1", [{"kvPair": {"key": "app", "value": "web"}}]),
    document("us-east-1", [{"kvPair": {"key": "app", "value": "api"}}]),
    document("eu-west-1", [{"kvPair": {"key": "app", "value": "web"}}]),
    document("eu-west-1", [{"kvPair": {"key": "app", "value": "web"}}], port=8080),
    document("us-east-1", [{"key": "app"}], port=0),  # no longer validates: Rejected
    document("nowhere", [{"key": "app"}]),  # Rejected, for another reason
]


def encoded(doc: dict[str, Any], compressed: bool) -> str | bytes:
    """The document as the stores keep it: JSON text (memory, older items) or zlib-compressed (DynamoDB)."""
    text = json.dumps(doc)
    return zlib.compress(text.encode()) if compressed else text


def decode(raw: str | bytes) -> dict[str, Any]:
    return json.loads(zlib.decompress(raw) if isinstance(raw, bytes) else raw)  # type: ignore[no-any-return]


reads = st.lists(
    st.tuples(st.sampled_from(["a", "b"]), st.integers(0, len(VARIANTS) - 1), st.booleans(), st.text(max_size=3)),
    min_size=1,
    max_size=40,
)


@settings(max_examples=examples(200))
@given(reads=reads, limit=st.integers(1, 8))
def test_every_read_is_what_validating_the_stored_document_gives(reads: list[Any], limit: int) -> None:
    memo = ParsedDocuments(limit=limit)
    for name, variant, compressed, generation in reads:
        doc = VARIANTS[variant]
        got = memo.stored("shop", name, encoded(doc, compressed), decode, STATUS, "2026-01-01T00:00:00Z", generation)
        fresh = stored("shop", name, doc, STATUS, "2026-01-01T00:00:00Z", generation)
        assert got.upstream == fresh.upstream
        assert got.status == fresh.status
        assert got.recorded == fresh.recorded
        assert (got.problem and got.problem.message) == (fresh.problem and fresh.problem.message)
        assert (got.document, got.generation, got.key) == (fresh.document, fresh.generation, fresh.key)


def test_an_edit_is_validated_afresh_and_a_rejection_keeps_the_stored_status() -> None:
    memo = ParsedDocuments()
    first = memo.stored("shop", "web", json.dumps(VARIANTS[1]), decode, STATUS, "t1")
    edited = memo.stored("shop", "web", json.dumps(VARIANTS[2]), decode, STATUS, "t2")
    broken = memo.stored("shop", "web", json.dumps(VARIANTS[5]), decode, STATUS, "t3")
    assert first.upstream is not None and edited.upstream is not None
    assert first.upstream.ec2.filters != edited.upstream.ec2.filters
    assert broken.upstream is None and broken.status.state == REJECTED and broken.recorded == STATUS
    again = memo.stored("shop", "web", json.dumps(VARIANTS[1]), decode, STATUS, "t4")
    assert again.upstream == first.upstream


def test_the_same_content_under_another_name_is_its_own_upstream() -> None:
    memo = ParsedDocuments()
    raw = json.dumps(VARIANTS[0])
    one = memo.stored("shop", "web", raw, decode, STATUS, "t")
    other = memo.stored("shop", "api", raw, decode, STATUS, "t")
    assert one.upstream is not None and other.upstream is not None
    assert (one.upstream.name, other.upstream.name) == ("web", "api")
