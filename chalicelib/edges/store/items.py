"""DynamoDB's attribute values, through boto3's TypeSerializer and TypeDeserializer, and the items
whose shape a model gives (`UpstreamItem`, `AccountItem` in `chalicelib.domain.models`)."""

from __future__ import annotations

from typing import Any

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer

_SERIALIZER = TypeSerializer()


class _Deserializer(TypeDeserializer):
    def _deserialize_b(self, value: bytes) -> bytes:
        return bytes(value)  # the bytes themselves, not boto3's `Binary` wrapper


_DESERIALIZER = _Deserializer()


def to_item(values: dict[str, Any]) -> dict[str, Any]:
    """Plain values as DynamoDB attribute values (`None` values left out: DynamoDB has no such attribute)."""
    return {name: _SERIALIZER.serialize(value) for name, value in values.items() if value is not None}


def from_item(item: dict[str, Any]) -> dict[str, Any]:
    """DynamoDB attribute values as plain values (binary as bytes, numbers as Decimal)."""
    return {name: _DESERIALIZER.deserialize(value) for name, value in item.items()}


def item_key(item_id: str) -> dict[str, Any]:
    """The key of an item of either table (partition key `id`)."""
    return to_item({"id": item_id})


def values(**named: Any) -> dict[str, Any]:
    """ExpressionAttributeValues: `values(g=...)` names `:g`."""
    return {f":{name}": _SERIALIZER.serialize(value) for name, value in named.items()}
