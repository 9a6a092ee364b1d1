"""DynamoDB read units as AWS would charge them, measured on moto (which reports a flat 0.5 or 1).

`ReadMeter(client, raw)` hooks a DynamoDB client's events: each GetItem, BatchGetItem, Query
and Scan it sends is charged by DynamoDB's rules, from the full size of every item read (looked
up afterwards through `raw`, an unhooked client to the same tables):

- GetItem and BatchGetItem: each item's size rounded up to 4 KB (a missing item: one unit),
  whatever a ProjectionExpression returns: the whole item is what is charged;
- Query and Scan: the total size of the items read, rounded up to 4 KB, per request;
- a read unit covers a strongly consistent read; an eventually consistent one costs half.

The tests use it to prove a 304 costs the same whatever the set's size; `make bench` reports it.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from chalicelib.edges.store.chunks import item_bytes

UNIT_BYTES = 4096
READS = ("GetItem", "BatchGetItem", "Query", "Scan")


@dataclass
class Reads:
    """What one measured stretch read: requests by operation, items, their largest size, units."""

    requests: Counter[str] = field(default_factory=Counter)
    items: int = 0
    largest_item: int = 0
    units: float = 0.0
    tables: set[str] = field(default_factory=set)

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": dict(self.requests),
            "items": self.items,
            "largest_item_bytes": self.largest_item,
            "read_units": self.units,
        }


class ReadMeter:
    def __init__(self, client: Any, raw: Any) -> None:
        self._raw = raw
        self.reads = Reads()
        events = client.meta.events
        events.register("provide-client-params.dynamodb", self._remember)
        events.register("after-call.dynamodb", self._charge)

    def reset(self) -> Reads:
        done, self.reads = self.reads, Reads()
        return done

    @staticmethod
    def _remember(params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        context["read_meter_params"] = params

    def _size(self, table: str, key: dict[str, Any]) -> int | None:
        item = self._raw.get_item(TableName=table, Key=key, ConsistentRead=True).get("Item")
        return item_bytes(item) if item is not None else None

    def _charge_item(self, table: str, key: dict[str, Any], consistent: bool) -> None:
        size = self._size(table, key)
        self.reads.tables.add(table)
        if size is not None:
            self.reads.items += 1
            self.reads.largest_item = max(self.reads.largest_item, size)
        self.reads.units += max(1, math.ceil((size or 0) / UNIT_BYTES)) * (1 if consistent else 0.5)

    def _charge(self, model: Any, parsed: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        name = model.name
        if name not in READS:
            return
        params = context.get("read_meter_params", {})
        self.reads.requests[name] += 1
        if name == "GetItem":
            self._charge_item(params["TableName"], params["Key"], params.get("ConsistentRead", False))
        elif name == "BatchGetItem":
            unprocessed = parsed.get("UnprocessedKeys") or {}
            for table, request in params["RequestItems"].items():
                left = unprocessed.get(table, {}).get("Keys", [])
                for key in request["Keys"]:
                    if key not in left:
                        self._charge_item(table, key, request.get("ConsistentRead", False))
        else:
            table = params["TableName"]
            sizes = [self._size(table, {"id": item["id"]}) or 0 for item in parsed.get("Items", [])]
            self.reads.tables.add(table)
            self.reads.items += len(sizes)
            self.reads.largest_item = max([self.reads.largest_item, *sizes])
            factor = 1 if params.get("ConsistentRead", False) else 0.5
            self.reads.units += max(1, math.ceil(sum(sizes) / UNIT_BYTES)) * factor
